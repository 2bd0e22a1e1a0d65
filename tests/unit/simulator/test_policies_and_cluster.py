"""Routing policies on constructed views, predictions, and whole-cluster runs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from block import cli
from block.simulator import cluster, policies
from block.simulator.latency import LatencyModel
from block.simulator.prediction import Prediction, predict_one_more
from block.simulator.replica import Replica, ReplicaConfig
from block.simulator.requests import Request

RNG = random.Random(0)
REQ = policies.RouteRequest(prompt_tokens=100, output_tokens=50)


def view(i: int, running: int, waiting: int = 0, used: int = 0, e2e: float | None = None):  # type: ignore[no-untyped-def]
    pred = None if e2e is None else Prediction(0.0, 0.1, e2e)
    return policies.ReplicaView(i, running, waiting, used, 1000, prediction=pred)


def test_load_based_policies() -> None:
    views = [view(0, 5, 2, used=100), view(1, 3, 0, used=900), view(2, 4, 4, used=10)]
    assert policies.make_policy("least-requests").choose(REQ, views, RNG) == 1
    assert policies.make_policy("least-kv").choose(REQ, views, RNG) == 2
    assert policies.make_policy("llumnix").choose(REQ, views, RNG) == 2


def test_round_robin_cycles() -> None:
    rr = policies.make_policy("round-robin")
    views = [view(i, 0) for i in range(3)]
    assert [rr.choose(REQ, views, RNG) for _ in range(5)] == [0, 1, 2, 0, 1]


def test_block_picks_lowest_prediction_and_respects_slo() -> None:
    block = policies.make_policy("block")
    views = [view(0, 1, e2e=3.0), view(1, 9, e2e=2.0), view(2, 0)]
    assert block.choose(REQ, views, RNG) == 1
    slo = policies.RouteRequest(100, 50, slo_ttft_s=0.05)
    fast_ttft = policies.ReplicaView(3, 0, 0, 0, 1000, prediction=Prediction(0.0, 0.01, 5.0))
    assert block.choose(slo, [*views, fast_ttft], RNG) == 3
    assert block.choose(REQ, [view(0, 4), view(1, 2)], RNG) == 1  # no predictions: fallback


def test_block_treats_float_noise_as_a_tie() -> None:
    """Identical replicas' predictions can differ in the last bits; load then index decide."""
    block = policies.make_policy("block")
    noisy = 0.2348139879758052
    assert noisy - 0.23481398797580516 > 0  # the two differ, by one unit in the last place
    views = [view(0, 3, e2e=noisy), view(1, 1, e2e=0.23481398797580516), view(2, 1, e2e=noisy)]
    assert block.choose(REQ, views, RNG) == 1  # least loaded of the tie, lowest index next
    views = [view(0, 1, e2e=noisy), view(1, 1, e2e=0.23481398797580516)]
    assert block.choose(REQ, views, RNG) == 0
    # A real difference (a microsecond and more) still wins over load.
    views = [view(0, 1, e2e=0.2350), view(1, 9, e2e=0.2348)]
    assert block.choose(REQ, views, RNG) == 1


def test_power_of_k_samples_k_and_unknown_policy_errors() -> None:
    p = policies.make_policy("power-of-3")
    assert len(p.candidates(10, random.Random(1))) == 3
    from block.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown policy"):
        policies.make_policy("fastest")


def test_prediction_grows_with_queue(latency: LatencyModel) -> None:
    r = Replica(latency, ReplicaConfig("vllm", 512, 8))
    light = predict_one_more(r, 200, 100, 0.0)
    for i in range(30):
        r.submit(Request(i, 0.0, 500, 300), 0.0)
    heavy = predict_one_more(r, 200, 100, 0.0, impact=True)
    assert heavy.queue_s > light.queue_s
    assert heavy.e2e_s > light.e2e_s > light.ttft_s > 0
    assert heavy.added_delay_s is not None and heavy.added_delay_s > 0
    assert r.num_waiting > 0 and -1 not in r.recorder.arrival  # parent untouched


def test_cluster_is_deterministic_and_block_beats_random(latency: LatencyModel) -> None:
    rng = random.Random(4)
    t, reqs = 0.0, []
    for i in range(600):
        t += rng.expovariate(12.0)
        reqs.append(Request(i, t, rng.randint(20, 1500), rng.randint(20, 700)))
    results = {}
    for name in ("random", "block", "random"):
        reps = [Replica(latency, ReplicaConfig("sarathi", 512, 48), i) for i in range(4)]
        res = cluster.simulate_cluster(reps, policies.make_policy(name), reqs, seed=9)
        assert len(res.records) == len(reqs)
        e2e = sorted(r.e2e_s for r in res.records)
        if name in results:
            assert e2e == results[name]  # same seed, same result
        results[name] = e2e
    assert sum(results["block"]) < sum(results["random"])


def test_simulate_cli_writes_summary(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    code = cli.main(
        ["simulate", "--replicas", "2", "--workload", "azure-conv", "--qps", "5",
         "--requests", "200", "--policy", "least-requests", "--json", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(out.read_text())
    assert summary["completed"] == 200
    for key in ("ttft", "tpot", "e2e"):
        assert set(summary[key]) >= {"mean", "p50", "p90", "p99"}
        assert summary[key]["p99"] >= summary[key]["p50"] > 0
    assert summary["config"]["attention_model"] == "analytic-roofline"


def test_simulate_cli_bad_input_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "--policy", "nope", "--quiet", "--requests", "5"]) == 2
    assert "unknown policy" in capsys.readouterr().err


def test_closed_form_prediction_equals_simulation(
    latency: LatencyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quiet-replica shortcut must give what forking and simulating gives."""
    from block.simulator import prediction
    from block.simulator.prediction import predict_quiet

    rng = random.Random(3)
    compared = 0
    for _ in range(150):
        kind = rng.choice(["vllm", "sarathi"])
        r = Replica(latency, ReplicaConfig(kind, 512, rng.choice([8, 48, 128])))  # type: ignore[arg-type]
        t = 0.0
        for i in range(rng.randint(0, 50)):
            t += rng.expovariate(rng.choice([2, 10, 30]))
            r.submit(Request(i, t, rng.randint(1, 1500), rng.randint(1, 600)), t)
        now = t + rng.random() * 0.5
        r.advance_to(now)
        prompt, output = rng.randint(1, 1500), rng.randint(1, 600)
        quick = predict_quiet(r, prompt, output, now)
        if quick is None:
            continue
        with monkeypatch.context() as m:
            m.setattr(prediction, "predict_quiet", lambda *a: None)
            full = predict_one_more(r, prompt, output, now)
        assert quick == pytest.approx((full.queue_s, full.ttft_s, full.e2e_s), abs=1e-9)
        compared += 1
    assert compared > 50
