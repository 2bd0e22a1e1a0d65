"""`block profile engine` against a running engine twin (a real HTTP engine with known step
times): the tables it writes load into the simulator and reproduce the engine's steps."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from block.simulator.calibration import StepShape
from block.simulator.latency import LatencyModel

MODEL = "meta-llama/Llama-2-7b-hf"


@pytest.mark.slow
async def test_profiled_tables_reproduce_the_engine(
    processes: Callable[[list[str]], Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = processes(["engine", "--bias", "1.3"])
    engine.start()
    await engine.wait_http("/health")
    out = tmp_path / "profiles" / "engine-x" / MODEL
    block = Path(sys.executable).parent / "block"
    done = subprocess.run(
        [str(block), "profile", "engine", "--url", engine.url, "--out", str(out),
         "--model-config", MODEL, "--batch-sizes", "1", "4", "16", "--prompt-lengths", "64",
         "1024", "--prefill-lengths", "64", "256", "1024"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "clean steps" in done.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["clean_steps"] >= 100 and len(meta["probes"]) == 8
    for name in ("mlp.csv", "attention.csv", "overhead.json"):
        assert (out / name).is_file()
    # The profile is data: a hardware name nobody declared loads from BLOCK_PROFILES_DIR.
    monkeypatch.setenv("BLOCK_PROFILES_DIR", str(tmp_path / "profiles"))
    profiled = LatencyModel.load("engine-x", MODEL)
    truth = LatencyModel.load("a100", MODEL)  # the twin runs this profile x 1.3
    shapes = [StepShape(n, n * kv) for n in (1, 2, 4, 8, 16) for kv in (100, 700, 1200)]
    shapes += [StepShape(n, n * 300, ((chunk, 0),)) for n in (1, 4) for chunk in (128, 512)]
    errors = sorted(abs(s.profile_s(profiled) / (1.3 * s.profile_s(truth)) - 1) for s in shapes)
    assert errors[len(errors) // 2] < 0.10, errors
    assert errors[-1] < 0.25, errors
    shutil.rmtree(tmp_path / "profiles")


def test_profile_engine_refuses_bad_input(tmp_path: Path) -> None:
    block = Path(sys.executable).parent / "block"
    for argv, message in (
        (["--url", "ftp://x", "--model-config", MODEL], "--url must be an http(s) URL"),
        (["--url", "http://127.0.0.1:9", "--model-config", "gpt-9"], "unknown model"),
        (["--url", "http://127.0.0.1:9", "--model-config", MODEL], "cannot read the engine"),
    ):
        done = subprocess.run(
            [str(block), "profile", "engine", "--out", str(tmp_path / "o"), *argv],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
