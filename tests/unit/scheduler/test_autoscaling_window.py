"""The gateway's rolling arrival window and size reading (block.scheduler.autoscaling_api)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from block.scheduler.autoscaling_api import ArrivalWindow
from block.simulator.workloads import AZURE_CONV, read_trace, trace_path

WINDOW_S = 60.0


@pytest.fixture(scope="module")
def arrivals() -> np.ndarray:
    """The first half hour of the Azure 2023 conversation trace's real arrivals, seconds."""
    trace = read_trace(trace_path(AZURE_CONV))
    return trace.arrival_s[trace.arrival_s < 1800.0] + 10.0


def reference(arrivals: np.ndarray, start: float, now: float) -> tuple[int, float]:
    """Arrivals in [start, now] and the CV of the gaps ending there, straight from the data."""
    inside = (arrivals >= start) & (arrivals <= now)
    idx = np.nonzero(inside)[0]
    gaps = [arrivals[i] - arrivals[i - 1] for i in idx if i > 0]
    gaps = [g for g in gaps if g <= WINDOW_S]
    cv = float(np.std(gaps) / np.mean(gaps)) if len(gaps) >= 2 and sum(gaps) > 0 else 1.0
    return int(inside.sum()), cv


def test_window_matches_the_trace_counted_directly(arrivals: np.ndarray) -> None:
    window = ArrivalWindow(WINDOW_S, started=0.0)
    checks = [75.0, 300.5, 901.2, 1500.0, 1809.9]
    i = 0
    for now in checks:
        while i < len(arrivals) and arrivals[i] <= now:
            window.arrive(float(arrivals[i]))
            i += 1
        covered, count, cv = window.report(now)
        # The window is whole buckets: the current one (partly over) and 59 before it.
        start = (math.floor(now) - 59) * 1.0
        assert covered == pytest.approx(now - start)
        want_count, want_cv = reference(arrivals, start, now)
        assert count == want_count
        assert cv == pytest.approx(want_cv, rel=1e-6)
    assert count > 0  # the last check saw real traffic, not an empty window


def test_old_arrivals_leave_the_window_and_memory_is_fixed() -> None:
    window = ArrivalWindow(10.0, started=0.0)
    slots = len(window._count)
    for k in range(1000):
        window.arrive(100.0 + k * 0.01)  # 100 per second for 10 s
    assert window.report(109.995)[1] == 1000
    assert window.report(115.0)[1] == 400  # buckets 106..115 remain: 106-109 are full
    assert window.report(125.0)[1] == 0
    assert len(window._count) == slots == 10


def test_regular_arrivals_have_no_spread_and_a_young_gateway_reports_its_age() -> None:
    window = ArrivalWindow(WINDOW_S, started=50.0)
    for k in range(20):
        window.arrive(50.0 + k * 0.5)
    covered, count, cv = window.report(60.0)
    assert covered == pytest.approx(10.0)  # up 10 s, not a whole minute
    assert count == 20
    assert cv == pytest.approx(0.0, abs=1e-6)
    # Nothing yet: Poisson's CV, never a division by zero.
    assert ArrivalWindow(WINDOW_S, started=0.0).report(5.0)[1:] == (0, 1.0)
