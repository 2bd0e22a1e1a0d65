"""The step model fitted to an engine: exact algebra of `calibrated`, and the online fit
recovering a different engine from noisy observations."""

from __future__ import annotations

import random

import numpy as np
import pytest

from block.simulator.calibration import (
    Coefficients,
    StepFit,
    StepShape,
    calibrated,
    features,
    fit,
)
from block.simulator.latency import LatencyModel
from block.simulator.prediction import predict_one_more
from block.simulator.replica import Replica, ReplicaConfig
from block.simulator.requests import Request

# An "engine" unlike the A100 profile: half its profile time plus a CPU-like linear part.
ENGINE = Coefficients(0.3, 1e-2, 1e-4, 2e-4, 1e-7, 5e-10, 3e-3)


def _shapes(n: int, seed: int) -> list[StepShape]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        decode = rng.randint(0, 48)
        kv = sum(rng.randint(20, 1500) for _ in range(decode))
        prefill = ()
        if decode == 0 or rng.random() < 0.3:
            prefill = ((rng.randint(16, 512), rng.choice((0, 0, 512, 1024))),)
        out.append(StepShape(decode, kv, prefill))
    return out


def test_calibrated_model_is_the_formula(latency: LatencyModel) -> None:
    model = calibrated(latency, ENGINE)
    assert model.calibration is not None and "profile=0.3" in model.calibration
    for shape in _shapes(200, 1):
        row = features(shape, shape.profile_s(latency))
        assert shape.profile_s(model) == pytest.approx(ENGINE.predict(row), rel=1e-9)
        if not shape.prefill:
            assert model.decode_step_s(shape.num_decode, shape.decode_kv_total) == pytest.approx(
                ENGINE.predict(row), rel=1e-9
            )
    # The prior is the profile itself; `latency` is untouched.
    same = calibrated(latency, Coefficients.prior())
    for shape in _shapes(50, 2):
        assert shape.profile_s(same) == pytest.approx(shape.profile_s(latency), rel=1e-12)
    assert latency.calibration is None


def test_fast_prediction_path_agrees_with_simulation_on_a_calibrated_model(
    latency: LatencyModel,
) -> None:
    model = calibrated(latency, ENGINE)
    r = Replica(model, ReplicaConfig("vllm", max_num_batched_tokens=512, max_num_seqs=16))
    for i in range(6):
        r.submit(Request(i, 0.0, 200 + 50 * i, 80 + 10 * i), 0.0)
    r.advance_to(0.5)  # everyone decoding: predictions take the closed-form path
    fast = predict_one_more(r, 300, 120, 0.5)
    slow = predict_one_more(r.fork(), 300, 120, 0.5, impact=True)
    assert fast.e2e_s == pytest.approx(slow.e2e_s, rel=1e-6)
    assert fast.ttft_s == pytest.approx(slow.ttft_s, rel=1e-6)


def test_online_fit_converges_to_the_engine_despite_noise_and_stalls(
    latency: LatencyModel,
) -> None:
    engine = calibrated(latency, ENGINE)
    rng = np.random.default_rng(3)
    online = StepFit(window=400, half_life=150, refit_every=25)
    assert online.coefficients == Coefficients.prior()
    for i, shape in enumerate(_shapes(800, 4)):
        truth = shape.profile_s(engine) * rng.lognormal(0, 0.02)
        if i % 37 == 0:
            truth *= 8  # a stalled step (the proxy was descheduled, a page fault...)
        online.observe(features(shape, shape.profile_s(latency)), truth)
    assert online.refits > 10 and online.fit_error is not None and online.fit_error < 0.05
    fitted = calibrated(latency, online.coefficients)
    errors = [
        abs(s.profile_s(fitted) / s.profile_s(engine) - 1) for s in _shapes(300, 5)
    ]  # held out
    assert float(np.median(errors)) < 0.02 and max(errors) < 0.10
    # Uncalibrated, the profile is far off on the same steps.
    raw = [abs(s.profile_s(latency) / s.profile_s(engine) - 1) for s in _shapes(300, 5)]
    assert float(np.median(raw)) > 0.2


def test_online_fit_tracks_drift(latency: LatencyModel) -> None:
    online = StepFit(window=300, half_life=60, refit_every=10)
    shapes = _shapes(900, 6)
    for i, shape in enumerate(shapes):
        slow = 1.0 if i < 450 else 1.45  # the same load ran 45 % slower later on
        online.observe(features(shape, shape.profile_s(latency)), shape.profile_s(latency) * slow)
    fitted = calibrated(latency, online.coefficients)
    ratios = [s.profile_s(fitted) / s.profile_s(latency) for s in _shapes(100, 7)]
    assert float(np.median(ratios)) == pytest.approx(1.45, rel=0.03)


def test_few_one_sided_observations_stay_near_the_profile(latency: LatencyModel) -> None:
    # Only single-sequence decodes at one KV length, 10 % slower than the profile: the fit
    # may not invent a slope for batches it has never seen.
    shape = StepShape(1, 500)
    rows = np.array([features(shape, shape.profile_s(latency))] * 40)
    coefs, error = fit(rows, rows[:, 0] * 1.1)
    assert error < 0.01
    big = StepShape(32, 32 * 1000)
    predicted = coefs.predict(features(big, big.profile_s(latency)))
    assert predicted == pytest.approx(big.profile_s(latency) * 1.1, rel=0.15)


def test_bad_observations_are_ignored(latency: LatencyModel) -> None:
    online = StepFit()
    row = features(StepShape(1, 10), 0.01)
    assert not online.observe(row, float("nan"))
    assert not online.observe(row, -1.0)
    assert len(online) == 0
