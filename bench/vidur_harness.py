"""Vidur 0.0.26 as a black box for benchmarks: its own virtualenv, local profiles, one run.

Vidur is never a dependency of the project. This module builds `.cache/vidur-venv` from PyPI,
lays Block's exported operator tables out as a local Hugging Face hub-cache snapshot (0.0.26
downloads its profiles from the hub; with `HF_HUB_OFFLINE=1` it reads the snapshot instead, no
patching), fits Vidur's random forests once per table content, runs `python -O -m vidur.main`
and reads its per-request metrics. Everything Vidur-specific is documented in
docs/vidur-study.md.
"""

from __future__ import annotations

import csv
import json
import lzma
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"  # the copies that ship with Block (data/README.md)
NETWORK_PROFILES = DATA / "vidur" / "network" / "a100_dgx"
CACHE = ROOT / ".cache"
VIDUR_VENV = CACHE / "vidur-venv"
WORK = CACHE / "vs_vidur"
VIDUR_VERSION = "0.0.26"
GPU = "a100"
MODEL = "meta-llama/Llama-2-7b-hf"
NETWORK_DEVICE = "a100_dgx"
CHUNK_SIZE = 512
BATCH_CAP = 128
BLOCK_SIZE = 16

# KV blocks Vidur 0.0.26 derives for this configuration (utils/memory_planner.py: 80 GiB x 0.9
# minus fp16 weights, / KV bytes per token = 122,752 tokens, rounded down to 29 whole 4,096-token
# requests = 29 x 256 blocks). Passed to Block explicitly so both simulate the same KV capacity.
VIDUR_NUM_BLOCKS = 7424

# Llama-2's context; Vidur's trace loader clips prompt + output to this many tokens.
MAX_TOKENS = 4096

# Vidur's default prediction range is 2M tokens per request, i.e. tens of millions of
# random-forest predictions; the model cannot hold more than its context.
PREDICTION_MAX_TOKENS = MAX_TOKENS

# A fixed day for Vidur 0.0.26's Splitwise-style trace loader, which filters rows by date.
TRACE_DATE = "2023-11-16"

# Placeholder commit id of the local hub-cache snapshots (any 40 hex digits will do).
SNAPSHOT_ID = "0" * 40


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of the converted trace."""

    arrived_at_s: float
    num_prefill_tokens: int
    num_decode_tokens: int


def run_checked(cmd: Sequence[str], what: str, cwd: Path | None = None) -> str:
    """Run a command to completion; its stdout, or BenchError with the output's tail."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise BenchError(f"{what} failed with exit code {proc.returncode}:\n{tail}")
    return proc.stdout


def write_splitwise_trace(requests: Sequence[TraceRequest], out: Path) -> None:
    """The same requests in the column layout Vidur 0.0.26's trace-replay generator reads."""
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Date", "Time", "PromptTokenCount", "CompletionTokenCount"])
        for r in requests:
            writer.writerow(
                [TRACE_DATE, f"{r.arrived_at_s:.7f}", r.num_prefill_tokens, r.num_decode_tokens]
            )


def ensure_vidur_venv(console: Console) -> Path:
    """Create `.cache/vidur-venv` with vidur==VIDUR_VERSION unless it is already there.

    Every command of that venv runs in WORK: in the repository root, Python would put the root
    on sys.path and our `operator/` folder would shadow the standard library's.
    """
    python = VIDUR_VENV / "bin" / "python"
    check = [str(python), "-c", "import importlib.metadata as m; print(m.version('vidur'))"]
    if python.exists():
        probe = subprocess.run(check, capture_output=True, text=True, cwd=WORK, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == VIDUR_VERSION:
            return python
    console.log(f"creating {VIDUR_VENV} with vidur=={VIDUR_VERSION} (a few minutes)")
    base = shutil.which("python3.11") or sys.executable
    run_checked([base, "-m", "venv", "--clear", str(VIDUR_VENV)], "creating Vidur's venv", WORK)
    pip = [str(python), "-m", "pip", "install", "-q"]
    run_checked([*pip, "--upgrade", "pip"], "upgrading pip in Vidur's venv", WORK)
    run_checked([*pip, f"vidur=={VIDUR_VERSION}"], f"pip install vidur=={VIDUR_VERSION}", WORK)
    return python


def write_hub_snapshots(
    hub_dir: Path, mlp: Path, attention: Path, network_dir: Path
) -> tuple[str, str]:
    """Lay the tables out as Hugging Face hub-cache snapshots Vidur can open offline.

    Vidur 0.0.26 calls `snapshot_download(repo_id, repo_type="dataset",
    cache_dir=<cache>/profiling_data/{compute,network}/)` and reads `config.json`,
    `mlp.csv.xz`, `attention.csv.xz` (compute) and `all_reduce.csv.xz`, `send_recv.csv.xz`
    (network) from the returned folder. With HF_HUB_OFFLINE=1 the hub client resolves
    `refs/main` to a snapshot folder in that cache, which is what is written here.
    Returns the two dataset ids to pass to Vidur.
    """
    compute_id = "block-local/compute-a100-llama-2-7b-hf"
    network_id = "block-local/network-a100-dgx"
    compute = {
        "config.json": json.dumps({"model": MODEL, "device_sku": GPU}).encode(),
        "mlp.csv.xz": lzma.compress(mlp.read_bytes()),
        "attention.csv.xz": lzma.compress(attention.read_bytes()),
    }
    network = {
        "config.json": json.dumps({"sku": NETWORK_DEVICE}).encode(),
        "all_reduce.csv.xz": lzma.compress((network_dir / "all_reduce.csv").read_bytes()),
        "send_recv.csv.xz": lzma.compress((network_dir / "send_recv.csv").read_bytes()),
    }
    for kind, repo_id, files in (
        ("compute", compute_id, compute),
        ("network", network_id, network),
    ):
        repo = hub_dir / "profiling_data" / kind / f"datasets--{repo_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / SNAPSHOT_ID
        snapshot.mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(SNAPSHOT_ID)
        for name, data in files.items():
            (snapshot / name).write_bytes(data)
    return compute_id, network_id


# Vidur's default hyper-parameter search: 27 random-forest settings x 10-fold CV per operator,
# about 3,000 forest fits (hours on two busy cores). "fast" pins the settings the full search
# picks for the linear operators and uses 2-fold CV (Vidur flags, no code change): ~30 fits.
FAST_GRID = {"num_estimators": "250", "max_depth": "16", "min_samples_split": "2"}
FAST_CV_SPLITS = "2"


def vidur_args(
    trace: Path,
    cache_dir: Path,
    out_dir: Path,
    ids: tuple[str, str],
    threads: int,
    grid: str,
) -> list[str]:
    """Vidur's command-line flags for the benchmark configuration."""
    compute_id, network_id = ids
    rf = "--random_forrest_execution_time_predictor_config_"
    trg = "--trace_request_generator_config_"
    flags = {
        "--seed": "42",
        "--cluster_config_num_replicas": "1",
        "--replica_config_model_name": MODEL,
        "--replica_config_device": GPU,
        "--replica_config_network_device": NETWORK_DEVICE,
        "--replica_config_tensor_parallel_size": "1",
        "--replica_config_num_pipeline_stages": "1",
        "--cache_config_block_size": str(BLOCK_SIZE),
        "--global_scheduler_config_type": "round_robin",
        "--replica_scheduler_config_type": "sarathi",
        "--sarathi_scheduler_config_chunk_size": str(CHUNK_SIZE),
        "--sarathi_scheduler_config_batch_size_cap": str(BATCH_CAP),
        "--request_generator_config_type": "trace_replay",
        f"{trg}trace_file": str(trace),
        f"{trg}date": TRACE_DATE,
        f"{trg}max_tokens": str(MAX_TOKENS),
        f"{trg}prefill_scale_factor": "1",
        f"{trg}decode_scale_factor": "1",
        f"{trg}time_scale_factor": "1",
        "--execution_time_predictor_config_type": "random_forrest",
        f"{rf}model_profiling_dataset": compute_id,
        f"{rf}network_profiling_dataset": network_id,
        f"{rf}cache_dir": str(cache_dir),
        f"{rf}prediction_max_tokens_per_request": str(PREDICTION_MAX_TOKENS),
        f"{rf}num_training_job_threads": str(threads),
        "--metrics_config_output_dir": str(out_dir),
    }
    # Booleans are argparse BooleanOptionalAction switches. Plots need a headless Chrome
    # (kaleido) and the other outputs are not used here; they only cost time.
    switches = [
        "--no-metrics_config_store_plots",
        "--no-metrics_config_enable_chrome_trace",
        "--no-metrics_config_store_utilization_metrics",
        "--no-metrics_config_store_batch_metrics",
    ]
    if grid == "fast":
        flags.update({f"{rf}{name}": value for name, value in FAST_GRID.items()})
        flags[f"{rf}k_fold_cv_splits"] = FAST_CV_SPLITS
    return [item for pair in flags.items() for item in pair] + switches


def new_run_dir(label: str) -> Path:
    """A fresh folder for one Vidur run (Vidur adds its own timestamped folder inside)."""
    path = WORK / "runs" / f"{label}-{time.time_ns()}"
    path.mkdir(parents=True)
    return path


def run_vidur(
    python: Path, args: Sequence[str], out_dir: Path, console: Console, label: str
) -> tuple[Path, float, dict[str, float]]:
    """Run `python -m vidur.main`; return its run folder, wall time and phase times.

    Phases come from the arrival times of Vidur's own log lines: `setup` (imports, config,
    predictor fitting or cache loading, trace loading) ends at "Starting simulation", `event_loop`
    ends at "Simulation ended", `output` is the rest (writing request_metrics.csv).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    before = set(out_dir.iterdir())
    # Offline: the profiles are the local hub snapshots written above; nothing is downloaded.
    # Unbuffered, so that log lines arrive when written and time the phases.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    # -O: Vidur 0.0.26's `Request.restart()` (preemption by recompute) leaves the pipeline-stage
    # token counters stale, so the next chunk of a restarted request trips
    # `assert self._num_stage_processed_tokens <= self.total_tokens` (entities/request.py:300)
    # and the run dies. With one pipeline stage those counters feed only assertions, so running
    # without assertions simulates preemption as intended.
    # Vidur must not start in the repository root: its `operator/` shadows the stdlib there.
    cmd = [str(python), "-O", "-m", "vidur.main", *args]
    marks: dict[str, float] = {}
    lines: list[str] = []
    start = time.perf_counter()
    with subprocess.Popen(
        cmd, cwd=WORK, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter() - start
            lines.append(line)
            if "Starting simulation" in line:
                marks.setdefault("loop_start", now)
            elif "Simulation ended at" in line:
                marks.setdefault("loop_end", now)
            elif "Trained model" in line:
                console.log(f"vidur {label}: {line.split('] ', 1)[-1].strip()[:100]}")
        returncode = proc.wait()
    wall_s = time.perf_counter() - start
    if returncode != 0:
        raise BenchError(f"Vidur ({label}) exited with {returncode}:\n{''.join(lines[-40:])}")
    if "loop_start" not in marks or "loop_end" not in marks:
        raise BenchError(f"Vidur ({label}) did not log its event loop:\n{''.join(lines[-40:])}")
    new = sorted(set(out_dir.iterdir()) - before)
    if len(new) != 1:
        raise BenchError(f"expected one new Vidur run folder in {out_dir}, found {new}")
    phases = {
        "setup": marks["loop_start"],
        "event_loop": marks["loop_end"] - marks["loop_start"],
        "output": wall_s - marks["loop_end"],
    }
    return new[0], wall_s, phases


def read_vidur_requests(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per-request TTFT, e2e, output token counts and total restarts from request_metrics.csv."""
    path = run_dir / "request_metrics.csv"
    if not path.is_file():
        raise BenchError(f"Vidur wrote no {path}")
    ttft, e2e, decode, restarts = [], [], [], 0
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("request_e2e_time"):
                continue  # a request that never completed has no e2e value
            ttft.append(float(row["prefill_e2e_time"]))
            e2e.append(float(row["request_e2e_time"]))
            decode.append(int(float(row["request_num_decode_tokens"])))
            restarts += int(float(row.get("request_num_restarts") or 0))
    return np.array(ttft), np.array(e2e), np.array(decode), restarts


@dataclass(frozen=True, slots=True)
class FitRecord:
    """Vidur's one-time model fitting, measured when it happened."""

    wall_s: float
    cpu_s: float
    threads: int

    @staticmethod
    def load(path: Path) -> FitRecord | None:
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return FitRecord(float(data["wall_s"]), float(data["cpu_s"]), int(data["threads"]))

    def save(self, path: Path) -> None:
        record = {"wall_s": self.wall_s, "cpu_s": self.cpu_s, "threads": self.threads}
        path.write_text(json.dumps(record))


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fit_vidur(
    python: Path,
    requests: Sequence[TraceRequest],
    cache_dir: Path,
    ids: tuple[str, str],
    threads: int,
    grid: str,
    console: Console,
) -> FitRecord:
    """Make Vidur fit (or reuse) its models for these tables; the fit is measured once.

    The fit runs Vidur on a one-request trace, so its time is nearly all model fitting and
    prediction; it is kept in `<cache_dir>/fit.json` next to Vidur's own model cache.
    """
    record_path = cache_dir / "fit.json"
    record = FitRecord.load(record_path)
    if record is not None:
        return record
    # Models without a record come from an interrupted run: Vidur would reuse them and the fit
    # would look instant, so drop them and measure a real fit.
    for name in ("predictors", "predictions", "training_predictions"):
        shutil.rmtree(cache_dir / name, ignore_errors=True)
    console.log(f"fitting Vidur's random forests ({grid} grid, {threads} threads); done once")
    trace = WORK / "fit_trace.csv"
    write_splitwise_trace(requests[:1], trace)
    cpu0 = _children_cpu_s()
    out_dir = new_run_dir("fit")
    args = vidur_args(trace, cache_dir, out_dir, ids, threads, grid)
    _, wall_s, _ = run_vidur(python, args, out_dir, console, "fit")
    record = FitRecord(wall_s, _children_cpu_s() - cpu0, threads)
    record.save(record_path)
    return record
