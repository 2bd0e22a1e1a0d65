"""Prediction fidelity against a stock vLLM: the sidecar's predictions vs what a client measures.

One real vLLM (the CPU build of tools/real-engine, on core 0) behind `block predictor` (a
process on core 1, beside this script). This script plays the gateway: for every request
(held-out ShareGPT prompts, `max_tokens` = the reply they really got, capped; Poisson arrivals)
it asks `POST /v1/predict` at the request's arrival, then sends it through the sidecar, streamed,
and measures TTFT and e2e at the client.

- loads: 30 %, 60 % and 85 % of the engine's capacity, measured first (the completion rate with
  every request of a batch of the same workload sent at once);
- lengths: `true` (the gateway knows each response length: the candidate is predicted with it
  and every request carries it in `x-block-output-tokens`), or `estimated` (the shipped
  estimator's median, cut to the run's 256-token cap, for the new request and for every
  request in flight; the twin corrects what outruns its estimate). The engine must produce the
  true length, so each request's `max_tokens` is it; the sidecar caps a queued request's
  assumed length there (a leak toward the truth for requests that end before the cap; the
  prediction for the new request itself never sees it);
- models: `profiled` (the tables `block profile engine` wrote for this engine a minute before,
  no online fit), `online` (an A100 Llama-2-7B profile, wrong for this engine, calibrated online
  from the streamed steps; measured after `--warmup-s` of traffic), `wrong` (the same A100
  profile, not calibrated).

The sidecar never trusts `ignore_eos` (`--no-trust-ignore-eos`), so what it knows of a length is
only what the header says. Also recorded at every 0.5 s: the twin's running and waiting against
the engine's own gauges (the share within +-1 is `gauge_agreement`).

    .venv/bin/python bench/real_engine_fidelity.py --json bench/results/real_engine_fidelity.json

A full run takes about 20 minutes on the 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from _procs import free_port, wait_ready

from block import terminal
from block.experiments import plans
from block.experiments.plans import PlannedRequest
from block.simulator.calibration import FEATURES

ROOT = Path(__file__).resolve().parents[1]
SERVE = ROOT / "tools" / "real-engine" / "serve.sh"
MODEL_DIR = ROOT / ".cache" / "real-engine" / "model"
SERVED = "tiny-llama3"
WRONG = ("a100", "meta-llama/Llama-2-7b-hf")
MAX_TOKENS_CAP = 256
PROMPT_CAP = 2048


@dataclass
class Sample:
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    assumed_tokens: int
    pred_ttft_s: float
    pred_e2e_s: float
    ttft_s: float = float("nan")
    e2e_s: float = float("nan")
    ok: bool = False


def workload(n: int, seed: int) -> list[PlannedRequest]:
    reqs = plans.plan("sharegpt", n, 1.0, seed, max_model_len=4096, max_tokens_cap=MAX_TOKENS_CAP)
    return [r for r in reqs if r.prompt_tokens <= PROMPT_CAP]


def estimates(reqs: list[PlannedRequest]) -> list[int]:
    from block.estimator.estimating import LengthEstimator

    est = LengthEstimator.load_default()
    # Every request of the run may produce at most MAX_TOKENS_CAP tokens (the same cap for
    # all, as a deployment's default max_tokens): an estimate beyond it is cut to it.
    return [
        max(1, min(e.median_tokens, MAX_TOKENS_CAP)) for e in est.estimate([r.prompt for r in reqs])
    ]


async def send(
    session: aiohttp.ClientSession,
    url: str,
    req: PlannedRequest,
    assumed: int,
    start: float,
) -> Sample:
    """Predict at arrival, then send through the sidecar and time it."""
    arrival = time.perf_counter() - start
    async with session.post(
        url + "/v1/predict",
        json={"prompt_tokens": req.prompt_tokens, "output_tokens": assumed},
    ) as r:
        pred = await r.json()
    s = Sample(arrival, req.prompt_tokens, req.max_tokens, assumed,
               float(pred["ttft_s"]), float(pred["e2e_s"]))  # fmt: skip
    body = {"model": SERVED, "prompt": req.prompt, "max_tokens": req.max_tokens,
            "ignore_eos": True, "stream": True}  # fmt: skip
    t0 = time.perf_counter()
    try:
        async with session.post(
            url + "/v1/completions", json=body, headers={"x-block-output-tokens": str(assumed)}
        ) as r:
            if r.status != 200:
                return s
            async for line in r.content:
                if line.startswith(b"data: {") and s.ttft_s != s.ttft_s:  # first token
                    s.ttft_s = time.perf_counter() - t0
        s.e2e_s = time.perf_counter() - t0
        s.ok = s.ttft_s == s.ttft_s
    except (aiohttp.ClientError, TimeoutError):
        pass
    return s


async def poll_gauges(
    session: aiohttp.ClientSession, url: str, stop: asyncio.Event, out: list[bool]
) -> None:
    while not stop.is_set():
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, KeyError, TypeError):
            async with session.get(url + "/v1/state") as r:
                state = await r.json()
            drift = state.get("drift")
            if drift is not None and state.get("engine") is not None:
                out.append(abs(drift["num_running"]) <= 1 and abs(drift["num_waiting"]) <= 1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def phase(
    session: aiohttp.ClientSession,
    url: str,
    reqs: list[PlannedRequest],
    assumed: list[int],
    qps: float,
    seconds: float,
    seed: int,
) -> tuple[list[Sample], list[bool]]:
    rng = random.Random(seed)
    start = time.perf_counter()
    stop = asyncio.Event()
    gauges: list[bool] = []
    poller = asyncio.create_task(poll_gauges(session, url, stop, gauges))
    tasks = []
    t, i = 0.0, 0
    while True:
        t += rng.expovariate(qps)
        if t > seconds:
            break
        delay = start + t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        k = (seed * 7919 + i) % len(reqs)
        tasks.append(asyncio.create_task(send(session, url, reqs[k], assumed[k], start)))
        i += 1
    samples = list(await asyncio.gather(*tasks))
    stop.set()
    await poller
    return samples, gauges


def errors(samples: list[Sample], gauges: list[bool]) -> dict[str, Any]:
    ok = [s for s in samples if s.ok and s.ttft_s > 0 and s.e2e_s > 0]
    ttft = np.array([abs(s.pred_ttft_s - s.ttft_s) for s in ok])
    e2e = np.array([abs(s.pred_e2e_s - s.e2e_s) for s in ok])
    ttft_rel = ttft / np.array([s.ttft_s for s in ok])
    e2e_rel = e2e / np.array([s.e2e_s for s in ok])
    return {
        "requests": len(samples),
        "failed": len(samples) - len(ok),
        "ttft_mape": float(ttft_rel.mean()),
        "e2e_mape": float(e2e_rel.mean()),
        "ttft_p90_abs_error_s": float(np.quantile(ttft, 0.9)),
        "e2e_p90_abs_error_s": float(np.quantile(e2e, 0.9)),
        "ttft_mpe": float(np.mean([(s.pred_ttft_s - s.ttft_s) / s.ttft_s for s in ok])),
        "e2e_mpe": float(np.mean([(s.pred_e2e_s - s.e2e_s) / s.e2e_s for s in ok])),
        "ttft_p50_s": float(np.median([s.ttft_s for s in ok])),
        "e2e_p50_s": float(np.median([s.e2e_s for s in ok])),
        "gauge_agreement": float(np.mean(gauges)) if gauges else None,
        "gauge_scrapes": len(gauges),
    }


async def capacity(session: aiohttp.ClientSession, url: str, reqs: list[PlannedRequest]) -> float:
    """Completed requests per second with a batch of the workload sent at once (straight to
    the engine): the rate this engine sustains at its batch cap."""
    batch = reqs[:96]

    async def one(r: PlannedRequest) -> None:
        body = {"model": SERVED, "prompt": r.prompt, "max_tokens": r.max_tokens,
                "ignore_eos": True}  # fmt: skip
        async with session.post(url + "/v1/completions", json=body) as resp:
            await resp.read()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(r) for r in batch))
    return len(batch) / (time.perf_counter() - t0)


def start_engine(port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(SERVE), str(port)], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "REAL_ENGINE_CPUS": "0"},
        )  # fmt: skip


def start_sidecar(
    engine_url: str, model: str, profiles: Path, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    exe = Path(sys.executable).parent / "block"
    gpu, name = ("cpu-vllm", str(MODEL_DIR)) if model == "profiled" else WRONG
    args = [str(exe), "predictor", "--port", str(port), "--engine-url", engine_url,
            "--gpu", gpu, "--model", name, "--served-model-name", SERVED,
            "--max-num-seqs", "128", "--no-trust-ignore-eos", "--log-level", "INFO"]  # fmt: skip
    if model != "online":
        args.append("--no-calibrate")
    env = {**os.environ, "BLOCK_PROFILES_DIR": str(profiles)}
    cpus = os.sched_getaffinity(0)
    cmd = ["taskset", "-c", "1", *args] if 1 in cpus else args
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    if proc.poll() is None:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from block.profiler import engine as engine_profiler
    from block.simulator.models import get_model

    console = terminal.console()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    engine_url = f"http://127.0.0.1:{port}"
    engine = start_engine(port, out / "vllm.log")
    result: dict[str, Any] = {"runs": []}
    try:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
            connector=conn, timeout=aiohttp.ClientTimeout(total=900)
        ) as session:
            await wait_ready(session, engine_url + "/health", 3000)
            reqs = workload(600, args.seed)
            console.print(f"vLLM up at {engine_url}; estimating {len(reqs)} lengths")
            estimated = estimates(reqs)
            truth = [r.max_tokens for r in reqs]
            # The engine's own profile, written by the black-box profiler.
            shape = get_model(str(MODEL_DIR))
            profiles = out / "profiles"
            prof_dir = profiles / "cpu-vllm" / shape.name
            t0 = time.perf_counter()
            profile = await asyncio.to_thread(
                engine_profiler.run,
                engine_profiler.EngineProfileRequest(
                    url=engine_url, out_dir=prof_dir, shape=shape, decode_tokens=40
                ),
            )
            result["profile"] = {
                "seconds": time.perf_counter() - t0,
                "clean_steps": profile.steps,
                "probes": profile.probes,
                "held_out_error_median": profile.held_out_error,
                "held_out_error_max": profile.held_out_max,
                "coefficients": dict(zip(FEATURES, profile.coefficients.as_tuple(), strict=True)),
            }
            console.print(f"profiled in {result['profile']['seconds']:.0f} s: {profile.steps} "
                          f"steps, held-out error {profile.held_out_error}")  # fmt: skip
            cap = await capacity(session, engine_url, reqs[100:])
            result["capacity_rps"] = cap
            console.print(f"capacity {cap:.2f} req/s")
            for model in args.models:
                side, side_url = start_sidecar(engine_url, model, profiles, out / f"{model}.log")
                try:
                    await wait_ready(session, side_url + "/readyz", 600)
                    if model == "online":
                        qps = args.loads[0] * cap
                        console.print(f"online: {args.warmup_s:.0f} s of traffic at {qps:.2f} "
                                      "req/s before measuring")  # fmt: skip
                        await phase(session, side_url, reqs, truth, qps, args.warmup_s, 99)
                    for li, load in enumerate(args.loads):
                        for lengths in args.lengths:
                            assumed = truth if lengths == "true" else estimated
                            seed = args.seed + 10 * li + (lengths == "true")
                            samples, gauges = await phase(
                                session, side_url, reqs, assumed, load * cap, args.seconds, seed
                            )
                            e = errors(samples, gauges)
                            run = {"load": load, "lengths": lengths, "model": model,
                                   "qps": load * cap, **e}  # fmt: skip
                            result["runs"].append(run)
                            (out / f"samples-{model}-{load}-{lengths}.json").write_text(
                                json.dumps([asdict(s) for s in samples])
                            )
                            console.print(
                                f"{model:>8} {load:4.0%} {lengths:>9}: n={e['requests']} "
                                f"TTFT MAPE {e['ttft_mape']:.1%} e2e MAPE {e['e2e_mape']:.1%} "
                                f"gauges {e['gauge_agreement']}"
                            )
                    async with session.get(side_url + "/metrics") as r:
                        text = await r.text()
                    coef = [ln for ln in text.splitlines() if "step_model_coefficient{" in ln]
                    if coef:
                        result.setdefault("online_fit", coef)
                finally:
                    stop(side)
                    await asyncio.sleep(2.0)
    finally:
        stop(engine, group=True)
    return result


def table(result: dict[str, Any]) -> str:
    head = ("| load | lengths | model | requests | TTFT MAPE | TTFT p90 abs err (s) | e2e MAPE | "
            "e2e p90 abs err (s) | gauges within +-1 |")  # fmt: skip
    lines = [head, "|" + "---|" * 9]
    for r in result["runs"]:
        g = "n/a" if r["gauge_agreement"] is None else f"{r['gauge_agreement']:.1%}"
        lines.append(
            f"| {r['load']:.0%} | {r['lengths']} | {r['model']} | {r['requests']} | "
            f"{r['ttft_mape']:.1%} | {r['ttft_p90_abs_error_s']:.3f} | {r['e2e_mape']:.1%} | "
            f"{r['e2e_p90_abs_error_s']:.2f} | {g} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--loads", type=float, nargs="+", default=[0.3, 0.6, 0.85])
    ap.add_argument("--lengths", nargs="+", default=["true", "estimated"])
    ap.add_argument("--models", nargs="+", default=["profiled", "online", "wrong"])
    ap.add_argument("--seconds", type=float, default=60.0, help="measured traffic per run")
    ap.add_argument("--warmup-s", type=float, default=120.0, help="online: traffic before runs")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="out/real-engine-fidelity")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not (ROOT / ".cache" / "real-engine" / "venv" / ".real-engine-stamp").is_file():
        sys.exit("the real engine is not built: run `make real-engine`")
    result = asyncio.run(main_async(args))
    result["command"] = " ".join(["bench/real_engine_fidelity.py", *sys.argv[1:]])
    result["machine"] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
    md = table(result)
    terminal.console().print(md)
    (Path(args.out) / "table.md").write_text(md + "\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
