"""`block profile engine` and the sidecar's online calibration against a stock vLLM
(real-engine tier, see conftest.py)."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from block.simulator.calibration import StepShape
from block.simulator.latency import LatencyModel
from block.simulator.models import get_model

pytestmark = pytest.mark.real_engine
SERVED = "tiny-llama3"
MODEL_DIR = Path(__file__).resolve().parents[2] / ".cache" / "real-engine" / "model"


def test_profiled_tables_load_and_predict_held_back_points(
    real_engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shape = get_model(str(MODEL_DIR))
    out = tmp_path / "profiles" / "cpu-vllm" / shape.name
    block = Path(sys.executable).parent / "block"
    done = subprocess.run(
        [str(block), "profile", "engine", "--url", real_engine.url, "--out", str(out),
         "--model-config", str(MODEL_DIR), "--decode-tokens", "40"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["clean_steps"] >= 300, meta["probes"]
    # Held-back probes (batch sizes and KV lengths the fit never saw): their median measured
    # step against the fitted model's.
    assert meta["held_out_error_median"] < 0.15, meta
    monkeypatch.setenv("BLOCK_PROFILES_DIR", str(tmp_path / "profiles"))
    model = LatencyModel.load("cpu-vllm", str(MODEL_DIR))
    assert model.describe()["mlp_profile"].startswith(str(out))
    # The loaded tables reproduce the fitted step model the profiler reports.
    c = meta["coefficients"]
    for shape_ in (StepShape(1, 100), StepShape(16, 16 * 700), StepShape(4, 2000, ((256, 0),))):
        expected = (
            c["constant_s"] + c["per_token_s"] * shape_.num_tokens
            + c["per_sequence_s"] * shape_.num_seqs
            + c["per_decode_kv_token_s"] * shape_.decode_kv_total
            + c["per_prefill_pair_s"] * shape_.prefill_pairs
            + c["per_prefill_chunk_s"] * len(shape_.prefill)
        )  # fmt: skip
        assert shape_.profile_s(model) == pytest.approx(expected, rel=0.02)


async def test_sidecar_calibrates_to_the_engine(sidecar: Any, real_engine: Any) -> None:
    side = await sidecar()
    cal = side.sidecar.calibrator
    assert cal is not None
    rng = random.Random(3)

    async def client(http: aiohttp.ClientSession, n: int) -> None:
        for _ in range(n):
            body = {
                "model": SERVED,
                "prompt": "word " * rng.randint(5, 600),
                "max_tokens": rng.randint(16, 64),
                "ignore_eos": True,
                "stream": True,
            }
            async with http.post(side.url + "/v1/completions", json=body) as r:
                assert r.status == 200
                await r.read()

    async with aiohttp.ClientSession() as http:
        await client(http, 3)
        await asyncio.gather(*(client(http, 8) for _ in range(6)))
        assert cal.fit.refits >= 2, cal.observer.counts
        cal.recent_ratios.clear()
        await asyncio.gather(*(client(http, 3) for _ in range(6)))
    ratio = cal.median_recent_ratio()
    # Fitted steps match the engine's at the median (each step jitters by +-20 % here).
    assert ratio is not None and abs(ratio - 1) < 0.15, (ratio, cal.observer.counts)
    assert side.sidecar.twin.latency.calibration is not None
    # vLLM spends milliseconds on a request outside its steps (HTTP, tokenizing, waiting for
    # the step in flight): learned from the streams and added to predictions.
    assert 0.001 < cal.ttft_offset_s < 0.1, sorted(cal.ttft_gaps)
