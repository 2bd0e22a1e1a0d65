"""Each simulated experiment at a tiny size: runs, writes its CSV/PNG/markdown, and the numbers
it writes are consistent with each other."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from block import cli
from block.experiments import simulating, workload
from block.experiments.clusters import ClusterSpec

TINY = ["--replicas", "2", "--requests", "120", "--quiet"]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_capacity_finds_a_capacity_per_policy(tmp_path: Path) -> None:
    rc = cli.main(["experiment", "capacity", "--out", str(tmp_path), *TINY, "--start-qps", "20",
                   "--rel-tol", "0.1", "--grid", "1.0",
                   "--policies", "block:estimated,least-requests,random"])  # fmt: skip
    assert rc == 0
    caps = {r["policy"]: float(r["capacity_qps"]) for r in _rows(tmp_path / "capacity.csv")}
    assert set(caps) == {"block:estimated", "least-requests", "random"}
    assert all(c > 0 for c in caps.values())
    curves = _rows(tmp_path / "curves.csv")
    # Every measured point under the capacity met the SLO; the search's failing point did not.
    for r in curves:
        if r["phase"] == "search" and float(r["qps"]) <= caps[r["policy"]]:
            assert float(r["ttft_p99_s"]) <= 3.0
    assert (tmp_path / "capacity.png").stat().st_size > 0
    assert "| block:estimated |" in (tmp_path / "capacity.md").read_text()


def test_prediction_oracle_ttft_beats_estimated(tmp_path: Path) -> None:
    rc = cli.main(["experiment", "prediction", "--out", str(tmp_path), *TINY, "--qps", "10"])
    assert rc == 0
    rows = _rows(tmp_path / "predictions.csv")
    assert {r["lengths"] for r in rows} == {"oracle", "estimated"}
    for r in rows:
        assert float(r["actual_e2e_s"]) >= float(r["actual_ttft_s"]) > 0
    md = (tmp_path / "prediction.md").read_text()
    assert "| oracle | ttft |" in md and (tmp_path / "prediction.png").is_file()


def test_config_search_covers_the_grid(tmp_path: Path) -> None:
    args = ["--start-qps", "20", "--rel-tol", "0.2", "--policies", "least-requests"]
    rc = cli.main(["experiment", "config-search", "--out", str(tmp_path), *TINY, *args])
    assert rc == 0
    rows = _rows(tmp_path / "config_search.csv")
    assert {(r["max_num_seqs"], r["chunk_tokens"]) for r in rows} == {
        ("24", "512"),
        ("24", "2048"),
        ("48", "512"),
        ("48", "2048"),
    }
    assert (tmp_path / "config_search.png").is_file()


def test_burstiness_replays_gamma_and_azure(tmp_path: Path) -> None:
    rc = cli.main(["experiment", "burstiness", "--out", str(tmp_path), *TINY, "--qps", "10",
                   "--cvs", "1,4", "--policies", "block:estimated,round-robin"])  # fmt: skip
    assert rc == 0
    rows = _rows(tmp_path / "burstiness.csv")
    assert {r["arrivals"] for r in rows} == {"gamma cv=1", "gamma cv=4", "azure-conv trace"}
    azure = [r for r in rows if r["arrivals"] == "azure-conv trace"]
    # The trace is compressed to the requested mean rate (a short window: within a factor 2).
    assert all(5 <= float(r["throughput_rps"]) <= 20 for r in azure)


def test_belief_twins_stay_consistent_with_the_engine() -> None:
    """With estimated lengths every request still completes exactly once, and the predictions
    the router made are finite."""
    spec = ClusterSpec(replicas=3)
    pool = workload.load_pool(spec.max_model_len, "prompt-median")
    wl = workload.poisson(pool, 150, 12.0, seed=3)
    res = simulating.run(spec, "block", wl, "estimated", seed=3, keep_predictions=True)
    assert sorted(r.rid for r in res.records) == list(range(150))
    assert len(res.predictions) == 150
    assert all(p.e2e_s >= p.ttft_s > 0 for p in res.predictions.values())


def test_early_stop_marks_an_overloaded_run_as_failing() -> None:
    spec = ClusterSpec(replicas=1)
    pool = workload.load_pool(spec.max_model_len, "prompt-median")
    wl = workload.poisson(pool, 400, 200.0, seed=1)
    res = simulating.run(spec, "least-requests", wl, stop_ttft_s=1.0)
    assert res.aborted and simulating.p99_ttft(res) == float("inf")


@pytest.mark.parametrize(
    ("generated", "expected"),
    [(0, 263), (15, (20 + 50 + 100 + 400 + 1000) / 5 - 15), (500, 500), (5000, 5000)],
)
def test_remaining_length_is_the_conditional_mean_overshoot(
    generated: int, expected: float
) -> None:
    rem = simulating.RemainingLength([10, 20, 50, 100, 400, 1000])
    # E[L - g | L > g]; past the longest observation, as many again as generated.
    assert rem(generated) == round(expected)


@pytest.mark.parametrize(
    "policy", ["llm-d-scorers", "llm-d-default", "dynamo-kv", "aibrix-prefix", "sglang-cache-aware"]
)
def test_experiments_route_the_baselines_as_the_cluster_model_does(policy: str) -> None:
    """The experiments' routing loop keeps the same router memory as `simulate_cluster`, so a
    baseline routes identically in both (its ledger and prefix index are not left empty)."""
    from block.simulator.cluster import simulate_cluster
    from block.simulator.policies import make_policy

    spec = ClusterSpec(replicas=3)
    pool = workload.load_pool(spec.max_model_len, "prompt-median")
    wl = workload.poisson(pool, 120, 20.0, seed=5)
    res = simulating.run(spec, policy, wl, seed=5)
    alone = simulate_cluster(spec.replicas_(3), make_policy(policy), wl.requests, seed=5)
    assert res.routed == alone.routed and sum(res.routed) == 120
