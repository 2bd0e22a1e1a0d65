"""The live twin on a fake clock: arrivals, tokens, completions, and its corrections."""

from __future__ import annotations

import pytest

from block.errors import InvalidRequest
from block.predictor.lengths import LengthDistribution
from block.predictor.twin import LiveTwin
from block.simulator.latency import LatencyModel
from block.simulator.replica import ReplicaConfig


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def latency() -> LatencyModel:
    return LatencyModel.load("a100", "meta-llama/Llama-2-7b-hf")


@pytest.fixture(scope="module")
def lengths() -> LengthDistribution:
    return LengthDistribution.sharegpt()


def make(
    latency: LatencyModel, lengths: LengthDistribution, **kw: object
) -> tuple[LiveTwin, Clock]:
    clock = Clock()
    twin = LiveTwin(latency, ReplicaConfig(num_blocks=3000), lengths, clock=clock, **kw)  # type: ignore[arg-type]
    return twin, clock


def test_arrivals_and_completions_leave_no_trace(
    latency: LatencyModel, lengths: LengthDistribution
) -> None:
    twin, clock = make(latency, lengths)
    tracked = [twin.arrive(100 + i, 50, 50, exact=True, streaming=True) for i in range(20)]
    assert twin.load().num_running + twin.load().num_waiting == 20
    clock.t += 0.5
    for t in tracked:
        assert t is not None
        twin.token(t, 3)
        out = twin.finish(t, 50)
        assert out.predicted is not None and out.ttft_s is not None
        assert out.e2e_s == pytest.approx(0.5)
    twin.settle()
    rec = twin.replica.recorder
    assert not twin.requests and twin.replica.used_blocks == 0
    assert not (rec.arrival or rec.scheduled or rec.first_token or rec.finished)


def test_assumed_lengths(latency: LatencyModel, lengths: LengthDistribution) -> None:
    twin, _ = make(latency, lengths)
    assert twin.assume(100, 64, None, exact=True) == (64, 64)
    assert twin.assume(100, 64, 500, exact=False) == (64, 64)  # capped by max_tokens
    assert twin.assume(100, None, 321, exact=False) == (321, 4096 - 100)
    assert twin.assume(100, None, None, exact=False) == (lengths.expected(3996), 3996)
    prior, _ = make(latency, lengths, prior_output_tokens=77)
    assert prior.assume(100, None, None, exact=False)[0] == 77


def test_a_request_outrunning_its_estimate_is_extended_not_dropped(
    latency: LatencyModel, lengths: LengthDistribution
) -> None:
    twin, clock = make(latency, lengths)
    t = twin.arrive(200, 5, 4000, exact=False, streaming=True)
    assert t is not None
    clock.t += 2.0  # the twin finished its 5 tokens long ago
    twin.token(t, 120)  # the engine has streamed 120 and goes on
    twin.settle()
    assert twin.load().num_running == 1
    assert t.extended >= 1 and twin.num_extensions >= 1
    assert t.output_tokens == 120 + lengths.remaining(120, 4000)
    assert twin.replica.progress(t.rid) == 120


def test_non_streamed_requests_are_extended_from_the_estimate(
    latency: LatencyModel, lengths: LengthDistribution
) -> None:
    twin, clock = make(latency, lengths)
    t = twin.arrive(50, 40, 1000, exact=False, streaming=False)
    assert t is not None
    clock.t += 3.0
    twin.settle()
    assert twin.load().num_running == 1
    assert t.output_tokens == 40 + lengths.remaining(40, 1000)


def test_progress_is_resynced_to_the_tokens_streamed(
    latency: LatencyModel, lengths: LengthDistribution
) -> None:
    twin, clock = make(latency, lengths, sync_interval_s=0.05)
    t = twin.arrive(300, 400, 400, exact=True, streaming=True)
    assert t is not None
    clock.t += 1.0
    twin.token(t, 30)  # the engine is slower than the twin thinks
    twin.settle()
    assert twin.replica.progress(t.rid) == 30 and twin.num_resyncs == 1
    assert t.output_tokens == 400  # an exact length stays
    clock.t += 0.01  # within the sync interval: no new correction
    twin.token(t, 1)
    twin.settle()
    assert twin.num_resyncs == 1


def test_requests_that_cannot_fit_are_not_tracked(
    latency: LatencyModel, lengths: LengthDistribution
) -> None:
    twin, _ = make(latency, lengths)
    assert twin.arrive(5000, 10, 10, exact=True, streaming=True) is None
    assert not twin.requests


def test_predict_validates_each_candidate(
    latency: LatencyModel, lengths: LengthDistribution
) -> None:
    twin, _ = make(latency, lengths)
    a, b = twin.predict([(100, 100), (200, 300)])
    assert 0 < a.ttft_s < a.e2e_s < b.e2e_s
    with pytest.raises(InvalidRequest, match=r"candidates\.1: .*context"):
        twin.predict([(10, 10), (4000, 500)])


def test_reconfigure_only_when_idle(latency: LatencyModel, lengths: LengthDistribution) -> None:
    twin, _ = make(latency, lengths)
    t = twin.arrive(10, 10, 10, exact=True, streaming=True)
    assert t is not None
    assert not twin.reconfigure(ReplicaConfig(num_blocks=100))
    twin.cancel(t)
    assert twin.reconfigure(ReplicaConfig(num_blocks=100))
    assert twin.replica.num_blocks == 100
