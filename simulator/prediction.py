""" "What if this replica got one more request now?" answered by forking and running forward."""

from __future__ import annotations

from dataclasses import dataclass

from block.simulator import replica as replica_mod
from block.simulator.latency import RooflineAttention
from block.simulator.replica import Replica
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


def predict_quiet(
    replica: Replica, prompt: int, output: int, now: float
) -> tuple[float, ...] | None:
    """Closed-form "one more request" for a replica with nothing waiting and nothing
    prefilling, the common case at moderate load: returns (queue, ttft, e2e) seconds from `now`,
    or None when the general simulation is needed (queues, possible preemption, admission
    limits). Equal to forking and simulating, without building any state."""
    r = replica
    cfg = r.config
    if r.waiting or r.prefills or prompt <= 0 or output <= 0:
        return None
    inflight = r.inflight
    if inflight is None:
        t, g = max(now, r.now), r.g
    elif isinstance(inflight, replica_mod._Run):
        if inflight.end_s <= now:
            return None
        lo = min(inflight.steps_done(now - inflight.start_s), inflight.steps - 1)
        t, g = inflight.start_s + inflight.elapsed(lo + 1), inflight.g0 + lo + 1
    elif not inflight.chunks and inflight.end_s > now:
        t, g = inflight.end_s, r.g + 1
    else:
        return None
    bs = r._bs
    heap = r.finish_heap
    if len(heap) == r.n_dec:  # no stale entries (preempted members) to skip
        members = sorted([(fg, e[2].key) for e in heap if (fg := e[0]) > g])
    else:
        running = r.running
        members = sorted(
            [(fg, m.key) for fg, _, m in heap if fg > g and running.get(m.req.rid) is m]
        )
    n = len(members)
    if n + 1 > cfg.max_num_seqs:
        return None
    # Blocks: a generous bound on what everyone could need until the candidate finishes;
    # when it does not fit, preemption is possible and only the full simulation is exact.
    growth = (n + 1) * ((prompt + output) // bs + 2)
    free = r.num_blocks - r.used_blocks - r._watermark_blocks
    if -(-(prompt + output) // bs) + growth > free:
        return None
    lat = r.latency
    budget = cfg.max_num_batched_tokens
    keys = sum(k for _, k in members)
    i = 0  # members[:i] have finished
    start = t
    computed = 0
    while computed < prompt:  # the candidate's prefill, chunk by chunk, beside the decodes
        chunk = min(prompt - computed, budget - n)
        if chunk <= 0:
            return None
        t += lat.step_time_s(n + chunk, n, keys + n * g, ((chunk, computed),))
        computed += chunk
        g += 1
        while i < len(members) and members[i][0] <= g:
            keys -= members[i][1]
            n -= 1
            i += 1
    ttft = t
    if output > 1:
        cand_key, cand_finish = prompt - g, output - 1 + g
        n += 1
        keys += cand_key
        # decode_step_s inlined (the hot loop of the block policy): fixed part + attention.
        if lat.compat != "none":
            return None
        lat.decode_step_s(len(members) + 1, 0)  # fills the per-batch fixed parts
        fixed, attn_decode, layers = lat._decode_base, lat.attention.decode_s, lat.num_layers
        # With attention linear in the cached KV, the mean step of a segment is its middle one
        # (what the general path's first/last average gives); tables need both ends.
        linear = isinstance(lat.attention, RooflineAttention)
        count = len(members)
        while g < cand_finish:
            nxt = members[i][0] if i < count else cand_finish
            steps = (nxt if nxt < cand_finish else cand_finish) - g
            if steps == 1:
                t += fixed[n] + layers * attn_decode(n, keys + n * g)
            elif linear:
                mid = keys + n * g + n * (steps - 1) / 2
                t += steps * (fixed[n] + layers * attn_decode(n, mid))  # type: ignore[arg-type]
            else:
                first = fixed[n] + layers * attn_decode(n, keys + n * g)
                last = fixed[n] + layers * attn_decode(n, keys + n * (g + steps - 1))
                t += steps * (first + last) / 2
            g += steps
            while i < count and members[i][0] <= g:
                keys -= members[i][1]
                n -= 1
                i += 1
    return start - now, ttft - now, t - now
