"""Workload builders over the real traces that ship in `block.data`."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
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


def test_traces_ship_with_the_package() -> None:
    from block import data

    for name in (workloads.AZURE_CONV, workloads.ARXIV, "servegen/m-large.csv"):
        assert workloads.trace_path(name).parent.resolve().is_relative_to(data.TRACES)


def test_traces_dir_adds_a_folder_searched_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / workloads.ARXIV
    mine.write_text("num_prefill_tokens,num_decode_tokens\n100,7\n")
    monkeypatch.setenv("BLOCK_TRACES_DIR", str(tmp_path))
    assert workloads.arxiv_lengths().tolist() == [[100, 7]]
    # Names not in the extra folder still come from the package.
    assert len(workloads.read_trace(workloads.trace_path(workloads.AZURE_CONV)).arrival_s) == 19366
    with pytest.raises(ConfigError, match="BLOCK_TRACES_DIR adds folders"):
        workloads.trace_path("nowhere.csv")


def test_servegen_series_are_fourteen_days_of_ten_minute_windows() -> None:
    for name in workloads.SERVEGEN_SERIES:
        series = workloads.read_rate_series(name)
        assert series.window_s == 600.0
        assert len(series.rate) == 14 * 24 * 6
        assert (series.rate >= 0).all() and (series.rate > 0).mean() > 0.95
        busy = series.rate > 0
        assert (series.cv[busy] > 0).all() and np.isnan(series.cv[~busy]).all()
        # A daily swing: the average day's busiest hour is 1.45x (m-large) and 2.2x (m-small)
        # its quietest, as the ServeGen data README says.
        by_hour_of_day = series.rate.reshape(14, 24, 6).mean(axis=(0, 2))
        assert by_hour_of_day.max() / by_hour_of_day.min() > 1.4
    with pytest.raises(ConfigError, match="known: m-large, m-small"):
        workloads.read_rate_series("m-medium")
