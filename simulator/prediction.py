""" "What if this replica got one more request now?" answered by forking and running forward."""

from __future__ import annotations

from dataclasses import dataclass

from block.simulator.replica import Replica, predict_quiet
from block.simulator.requests import Request

CANDIDATE_RID = -1  # never a real request id


@dataclass(frozen=True, slots=True)
class Prediction:
    """Predicted latencies of a candidate request (seconds from its arrival)."""

    queue_s: float
    ttft_s: float
    e2e_s: float
    added_delay_s: float | None = None  # summed extra e2e of the requests already there


def predict_one_more(
    replica: Replica,
    prompt_tokens: int,
    output_tokens: int,
    now: float,
    impact: bool = False,
    horizon_s: float = float("inf"),
    block_hashes: tuple[int, ...] | None = None,
) -> Prediction:
    """Fork `replica`, add the candidate at `now`, simulate until it completes.

    `block_hashes` (the prompt's prefix-cache hash chain) lets the prediction count cache hits.
    With `impact`, also simulate the state without the candidate to the end and report how
    much later, in total, the requests already there finish because of the candidate.
    The parent replica is never modified.
    """
    cached = block_hashes and replica.cache is not None
    if not impact and horizon_s == float("inf") and not cached:
        quick = predict_quiet(replica, prompt_tokens, output_tokens, now)
        if quick is not None:
            return Prediction(*quick)
    cand = Request(CANDIDATE_RID, now, prompt_tokens, output_tokens, block_hashes)
    fork = replica.fork()
    fork.submit(cand, now)
    if not fork.run_until_finished(CANDIDATE_RID, horizon_s):
        inf = float("inf")
        return Prediction(inf, inf, inf, inf if impact else None)
    rec = fork.recorder
    added: float | None = None
    if impact:
        base = replica.fork()
        base.advance_to(now)
        base.run_until_idle()
        fork.run_until_idle()
        added = sum(
            rec.finished[rid] - t
            for rid, t in base.recorder.finished.items()
            if rid in rec.finished
        )
    return Prediction(
        queue_s=rec.scheduled[CANDIDATE_RID] - now,
        ttft_s=rec.first_token[CANDIDATE_RID] - now,
        e2e_s=rec.finished[CANDIDATE_RID] - now,
        added_delay_s=added,
    )
