"""`block experiment autoscale` at a tiny size: every strategy on both workloads, the outputs
agree with each other, the fixed baseline is sized as documented, and bad input is a clear error."""

from __future__ import annotations

import collections
import csv
import json
from pathlib import Path

import pytest

from block import cli
from block.experiments import autoscale

TINY = ["--limit", "300", "--step-rates", "3,9,3", "--step-seconds", "10,20,10",
        "--min-replicas", "1", "--max-replicas", "4", "--initial-replicas", "2",
        "--lead", "4", "--interval", "2", "--stabilisation", "8", "--window", "8"]  # fmt: skip


def test_every_strategy_on_both_workloads(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    rc = cli.main(["experiment", "autoscale", "--out", str(tmp_path / "out"),
                   "--json", str(summary), *TINY])  # fmt: skip
    assert rc == 0
    results = json.loads(summary.read_text())
    assert set(results) == {"azure", "step"}
    for w, by in results.items():
        # fixed_max (the top of the range) comes with fixed when fixed is sized below it;
        # on the step load, so does the bound of a scaler told the step times.
        extra = {"fixed_max"} if by["fixed"]["replicas"] < 4 else set()
        extra |= {"step_bound"} if w == "step" else set()
        assert set(by) == set(autoscale.STRATEGIES) | extra
        if extra:
            assert by["fixed_max"]["replica_hours"] > by["fixed"]["replica_hours"]
        for s in by.values():
            assert 0.0 <= s["slo_attainment"] <= 1.0
            assert s["replica_hours"] > 0 and s["ttft_p99"] >= 0
            assert 0.0 <= s["windows_p99_met"] <= 1.0
            # Every window meets the SLO only if the worst window does.
            assert (s["windows_p99_met"] == 1.0) == (s["worst_window_p99"] <= 1.0)
        fixed = by["fixed"]
        # Sized as documented: the smallest N reaching 0.99 (or the maximum when none does).
        sweep = {int(n): a for n, a in fixed["sweep"].items()}
        assert sweep[fixed["replicas"]] == fixed["slo_attainment"]
        if fixed["replicas"] < 4:
            assert fixed["slo_attainment"] >= 0.99
        assert all(a < 0.99 for n, a in sweep.items() if n < fixed["replicas"])
        if w == "step":  # the bound: the smallest quiet-phase size reaching fixed's
            bound = by["step_bound"]
            swept = {int(n): a for n, a in bound["sweep"].items()}
            assert swept[bound["low_replicas"]] == bound["slo_attainment"]
            target = fixed["slo_attainment"] - 1e-3
            assert bound["low_replicas"] == 4 or bound["slo_attainment"] >= target
            assert all(a < target for n, a in swept.items() if n < bound["low_replicas"])
        verdict = autoscale.verdicts(by)
        assert verdict["vs_fixed"] == (
            by["block"]["slo_attainment"] >= fixed["slo_attainment"] - 1e-3
            and by["block"]["replica_hours"] <= 0.75 * fixed["replica_hours"]
        )
    out = tmp_path / "out"
    with (out / "autoscale.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["workload"], r["strategy"]) for r in rows} == {
        (w, s) for w in ("azure", "step") for s in results[w]
    }
    for r in rows:
        s = results[r["workload"]][r["strategy"]]
        assert r["strategy"] != "step_bound" or r["workload"] == "step"
        assert float(r["replica_hours"]) == pytest.approx(s["replica_hours"], abs=1e-3)
    assert "target 1" in (out / "autoscale.md").read_text()
    assert "step: bound: told when the busy phase starts" in (out / "autoscale.md").read_text()
    assert (out / "autoscale_azure.png").stat().st_size > 0
    assert (out / "decisions_step.txt").exists()


@pytest.mark.parametrize(
    "bad",
    [["--strategies", "block,magic"], ["--workloads", "azure,nope"],
     ["--fixed-replicas", "99"], ["--step-rates", "1,2", "--step-seconds", "5"]],
)  # fmt: skip
def test_bad_input_is_a_clear_error(
    tmp_path: Path, bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["experiment", "autoscale", "--out", str(tmp_path), *bad]) == 2
    assert "error:" in capsys.readouterr().out


def test_known_steps_follow_the_busy_phases() -> None:
    import argparse

    from block.simulator import elastic

    args = argparse.Namespace(step_rates="20,60,20,45,20", step_seconds="100,200,50,10,40")
    busy = autoscale.busy_phases(args)
    assert busy == [(100.0, 300.0), (350.0, 360.0)]
    ctrl = autoscale.KnownSteps(busy, low=5, high=16)

    def at(t: float) -> int:
        view = elastic.View(t, 5.0, [], collections.deque(), 0, 1.0)
        return int(ctrl.control(view).target)

    assert [at(t) for t in (0, 99.9, 100, 299.9, 300, 355, 360)] == [5, 5, 16, 16, 5, 16, 5]
