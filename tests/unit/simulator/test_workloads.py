"""Workload builders over the real traces in ../shared/data."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from block.errors import ConfigError
from block.simulator import workloads


def test_azure_trace_has_real_timestamps() -> None:
    trace = workloads.read_trace(workloads.trace_path(workloads.AZURE_CONV))
    assert len(trace.arrival_s) == 19366
    assert trace.arrival_s[0] == 0.0
    assert 3000 < trace.arrival_s[-1] < 3700  # one hour
    assert (trace.prompt_tokens > 0).all()


def test_vidur_format_trace_and_time_scale(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "arrived_at,num_prefill_tokens,num_decode_tokens\n10,100,5\n12,5000,7\n11,3,9\n"
    )
    trace = workloads.read_trace(path)
    assert trace.arrival_s.tolist() == [0.0, 1.0, 2.0]
    reqs, dropped = workloads.from_trace(trace, max_model_len=4096, time_scale=2.0)
    assert dropped == 1  # the 5000-token prompt cannot fit a 4096 context
    assert [r.arrival_s for r in reqs] == [0.0, 0.5]


def test_bad_trace_columns_are_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="expected Azure columns"):
        workloads.read_trace(path)


def test_poisson_and_gamma_rates() -> None:
    rng = random.Random(1)
    for cv in (1.0, 3.0):
        times = workloads.arrivals(20000, 10.0, rng, cv=cv)
        assert 20000 / times[-1] == pytest.approx(10.0, rel=0.1)


def test_fit_lengths_caps_output() -> None:
    assert workloads.fit_lengths(4000, 500, 4096) == (4000, 96)
    assert workloads.fit_lengths(5000, 10, 4096) is None


def test_arxiv_sizes_are_long_prompts() -> None:
    sizes = workloads.arxiv_lengths()
    assert sizes[:, 0].mean() > 5 * sizes[:, 1].mean()
