"""Capacity search: brackets and bisects a monotone objective to the requested tolerance."""

from __future__ import annotations

import math

import pytest

from block.experiments.search import find_capacity


def _linear(capacity: float, slo: float):  # P99 crosses the SLO exactly at `capacity`
    return lambda qps: slo * qps / capacity


@pytest.mark.parametrize("start", [1.0, 37.0, 500.0])
def test_search_converges_to_the_crossing_from_any_start(start: float) -> None:
    res = find_capacity(_linear(42.0, 3.0), 3.0, start, rel_tol=0.01, max_evals=40)
    assert res.capacity_qps <= 42.0 < res.failing_qps
    assert res.failing_qps - res.capacity_qps <= 0.01 * res.capacity_qps
    assert all((v <= 3.0) == (q <= 42.0) for q, v in res.points.items())


def test_search_treats_infinite_objective_as_failing() -> None:
    res = find_capacity(lambda q: math.inf if q > 10 else 0.5, slo=3.0, start_qps=8.0, rel_tol=0.05)
    assert 9.5 <= res.capacity_qps <= 10.0
    assert res.failing_qps > 10.0


def test_search_reports_zero_when_nothing_meets_the_slo() -> None:
    res = find_capacity(lambda q: math.inf, slo=3.0, start_qps=5.0, min_qps=0.1)
    assert res.capacity_qps == 0.0
    assert res.failing_qps < 0.2


def test_search_respects_the_evaluation_budget() -> None:
    res = find_capacity(_linear(1000.0, 1.0), slo=1.0, start_qps=1.0, max_evals=5)
    assert res.evaluations == 5
    assert res.failing_qps == math.inf


def test_search_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        find_capacity(_linear(1.0, 1.0), slo=0.0, start_qps=1.0)
