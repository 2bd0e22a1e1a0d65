"""Length estimates for routing: estimator, prior, caps, and no queueing behind a busy estimator."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from block.scheduler import parsing
from block.scheduler.lengths import LengthSource
from block.scheduler.metrics import SchedulerMetrics


class SlowEstimator:
    """Answers 100 tokens once released: holds its thread like a long prompt would."""

    name = "slow"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def estimate(self, prompts: list[str]) -> list[Any]:
        self.calls += 1
        self.release.wait(5)

        class Est:
            p50_tokens = 100

        return [Est() for _ in prompts]


def inbound(prompt: str, **body: Any) -> parsing.Inbound:
    return parsing.parse("completions", {"model": "m", "prompt": prompt, **body}, {}, 4.0)


async def test_busy_estimator_falls_back_to_the_prior() -> None:
    est = SlowEstimator()
    metrics = SchedulerMetrics.create()
    with ThreadPoolExecutor(1) as pool:
        lengths = LengthSource(est, 7, pool, metrics, max_queue=1)
        first = asyncio.create_task(lengths.output_tokens(inbound("a b c", max_tokens=500)))
        await asyncio.sleep(0.05)
        # One estimate is in flight: the next ones do not wait behind it.
        assert await lengths.output_tokens(inbound("d e f", max_tokens=500)) == 7
        assert await lengths.output_tokens(inbound("g h", max_tokens=500)) == 7
        est.release.set()
        assert await first == 100
    assert est.calls == 1
    busy = metrics.registry.get_sample_value(
        "block_scheduler_length_fallbacks_total", {"reason": "busy"}
    )
    assert busy == 2


async def test_caps_and_exact_lengths() -> None:
    est = SlowEstimator()
    est.release.set()
    metrics = SchedulerMetrics.create()
    with ThreadPoolExecutor(1) as pool:
        lengths = LengthSource(est, 7, pool, metrics)
        assert await lengths.output_tokens(inbound("hello", max_tokens=30)) == 30  # capped
        exact = inbound("hello", max_tokens=300, ignore_eos=True)
        assert await lengths.output_tokens(exact) == 300
        assert await lengths.output_tokens(inbound("   ", max_tokens=300)) == 7  # nothing to read
    assert est.calls == 1
    prior_only = LengthSource(None, 7, None, metrics)
    assert prior_only.name == "prior"
    assert await prior_only.output_tokens(inbound("hello", max_tokens=3)) == 3
