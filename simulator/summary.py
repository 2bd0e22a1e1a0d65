"""Summaries of simulated (or measured) requests: the keys every Block report shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from block.simulator.requests import RequestRecord


def stats(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {"mean": float("nan"), "p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"mean": float(arr.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def summarize(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """`ttft`, `tpot`, `e2e`, `queue` (each mean/p50/p90/p99 in seconds), throughput."""
    if not records:
        return {"completed": 0}
    start = min(r.arrival_s for r in records)
    end = max(r.finished_s for r in records)
    span = max(end - start, 1e-9)
    out_tokens = sum(r.output_tokens for r in records)
    return {
        "completed": len(records),
        "ttft": stats([r.ttft_s for r in records]),
        "tpot": stats([r.tpot_s for r in records if r.output_tokens > 1]),
        "e2e": stats([r.e2e_s for r in records]),
        "queue": stats([r.queue_s for r in records]),
        "throughput_rps": len(records) / span,
        "output_tokens_per_s": out_tokens / span,
        "preemptions": sum(r.preemptions for r in records),
        "prefix_hit_rate": sum(r.cached_tokens for r in records)
        / max(1, sum(r.prompt_tokens for r in records)),
        "duration_s": span,
    }
