"""`Replica.abort`, `resume` and `progress`: the corrections a live twin applies to its model."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from block.errors import InvalidRequest
from block.simulator import replica as replica_mod
from block.simulator.latency import LatencyModel
from block.simulator.replica import Replica, ReplicaConfig
from block.simulator.requests import Request


def held_blocks(r: Replica) -> int:
    """KV blocks the running requests hold, recomputed from scratch (decodes in a step in flight
    already hold the slot of the token being computed; a run allocated all its steps)."""
    step = r.inflight
    if isinstance(step, replica_mod._Run):
        ahead = step.steps
    else:
        ahead = 1 if isinstance(step, replica_mod._Mixed) and step.n else 0
    total = 0
    for entry in r.running.values():
        if isinstance(entry, replica_mod._Prefill):
            total += entry.blocks
        else:
            total += -(-(entry.key + r.g + ahead) // r.config.block_size)
    return total


def check(r: Replica) -> None:
    decodes = [e for e in r.running.values() if isinstance(e, replica_mod._Decode)]
    assert r.n_dec == len(decodes)
    assert r.sum_key == sum(e.key for e in decodes)
    residues = [0] * r.config.block_size
    for e in decodes:
        residues[e.key % r.config.block_size] += 1
    assert r.residues == residues
    assert r.used_blocks == held_blocks(r)
    assert 0 <= r.used_blocks <= r.num_blocks
    if isinstance(r.inflight, replica_mod._Run):
        run = r.inflight
        assert run.used_before + r._decode_blocks_needed(run.g0, run.steps) == r.used_blocks


def requests(seed: int, n: int, qps: float) -> list[Request]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(qps)
        out.append(Request(i, t, rng.randint(1, 900), rng.randint(2, 400)))
    return out


CONFIGS = {
    "step-by-step": ReplicaConfig("vllm", 512, 32, num_blocks=600, max_run_steps=1),
    "decode-runs": ReplicaConfig("vllm", 512, 32, num_blocks=600),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_abort_frees_everything_wherever_the_request_is(latency: LatencyModel, name: str) -> None:
    r = Replica(latency, CONFIGS[name])
    reqs = requests(1, 60, 40.0)  # a burst: some wait, some prefill, some decode
    for q in reqs:
        r.submit(q, q.arrival_s)
    now = reqs[-1].arrival_s + 0.3
    r.advance_to(now)
    places = {type(r.running[q.rid]).__name__ if q.rid in r.running else "waiting" for q in reqs}
    assert {"_Decode", "waiting"} <= places
    for q in reqs:
        assert r.abort(q.rid, now) == (q.rid not in r.recorder.finished)
        check(r)
    assert r.abort(reqs[0].rid, now) is False
    r.run_until_idle()
    assert r.used_blocks == 0 and r.num_running == 0 and r.num_waiting == 0


def test_aborted_requests_never_finish_and_others_do(latency: LatencyModel) -> None:
    r = Replica(latency, CONFIGS["step-by-step"])
    reqs = requests(2, 80, 8.0)
    rng = random.Random(0)
    aborted: set[int] = set()
    for q in reqs:
        r.submit(q, q.arrival_s)
        if rng.random() < 0.3:
            victim = rng.choice([x.rid for x in reqs[: q.rid + 1]])
            if r.abort(victim, q.arrival_s):
                aborted.add(victim)
            check(r)
    r.run_until_idle()
    assert aborted
    assert set(r.recorder.finished) == {q.rid for q in reqs} - aborted
    assert r.used_blocks == 0


@pytest.mark.parametrize("name", list(CONFIGS))
def test_abort_and_resume_at_the_same_progress_changes_nothing(
    latency: LatencyModel, name: str
) -> None:
    """Alone in the replica, a request taken out and put back where it was finishes when it
    would have finished anyway."""
    q = Request(7, 0.0, 300, 300)  # about 3 s alone
    base = Replica(latency, CONFIGS[name])
    base.submit(q, 0.0)
    base.run_until_idle()
    r = Replica(latency, CONFIGS[name])
    r.submit(q, 0.0)
    for t in (0.5, 1.1, 2.0):
        r.advance_to(t)
        r.interrupt(t)
        done = r.progress(q.rid)
        assert done is not None and 1 <= done < q.output_tokens
        assert r.abort(q.rid, t)
        r.resume(q, done, t)
        check(r)
        assert r.progress(q.rid) == done
    r.run_until_idle()
    assert r.recorder.finished[q.rid] == pytest.approx(base.recorder.finished[q.rid], rel=1e-9)


def test_resume_sets_the_remaining_length(latency: LatencyModel) -> None:
    r = Replica(latency, CONFIGS["step-by-step"])
    counts: dict[int, int] = {}

    def hook(t: float, emitted: list[int], done: list[int]) -> None:
        for rid in emitted:
            counts[rid] = counts.get(rid, 0) + 1

    r.on_step = hook
    q = Request(1, 0.0, 100, 50)
    r.submit(q, 0.0)
    r.advance_to(0.3)
    seen = counts[1]
    assert r.progress(1) == seen
    # The engine says it is further along, with 500 tokens to go in all.
    r.abort(1, 0.3)
    r.resume(Request(1, 0.0, 100, 500), seen + 20, 0.3)
    r.run_until_idle()
    assert counts[1] == 500 - 20


def test_resume_waits_for_recompute_when_kv_is_full(latency: LatencyModel) -> None:
    r = Replica(latency, ReplicaConfig("vllm", 512, 32, num_blocks=40, max_run_steps=1))
    r.submit(Request(1, 0.0, 500, 100), 0.0)  # 32 of 40 blocks
    r.advance_to(0.2)
    r.resume(Request(2, 0.0, 300, 100), 10, 0.2)  # needs 20 blocks: does not fit
    assert r.num_waiting == 1 and r.progress(2) == 10
    check(r)
    r.run_until_idle()
    assert set(r.recorder.finished) == {1, 2} and r.used_blocks == 0


def test_resume_refuses_nonsense(latency: LatencyModel) -> None:
    r = Replica(latency, CONFIGS["decode-runs"])
    r.submit(Request(1, 0.0, 10, 10), 0.0)
    with pytest.raises(InvalidRequest, match="already"):
        r.resume(Request(1, 0.0, 10, 10), 3, 0.0)
    with pytest.raises(InvalidRequest, match="generated"):
        r.resume(Request(2, 0.0, 10, 10), 10, 0.0)
    with pytest.raises(InvalidRequest, match="generated"):
        r.resume(Request(2, 0.0, 10, 10), 0, 0.0)
    assert r.progress(99) is None


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    runs=st.booleans(),
    blocks=st.integers(200, 2000),
)
def test_random_corrections_keep_invariants(
    latency: LatencyModel, seed: int, runs: bool, blocks: int
) -> None:
    cfg = ReplicaConfig("vllm", 512, 24, num_blocks=blocks, max_run_steps=(1 << 30) if runs else 1)
    r = Replica(latency, cfg)
    rng = random.Random(seed)
    reqs = requests(seed, 60, 6.0)
    live: dict[int, Request] = {}
    aborted: set[int] = set()
    for q in reqs:
        r.submit(q, q.arrival_s)
        live[q.rid] = q
        check(r)
        t = q.arrival_s
        for rid in [x for x in live if x in r.recorder.finished]:
            del live[rid]
        if not live or rng.random() < 0.5:
            continue
        rid = rng.choice(list(live))
        r.interrupt(t)
        done = r.progress(rid)
        if rng.random() < 0.3 or not done:
            if r.abort(rid, t):
                aborted.add(rid)
                del live[rid]
        else:
            old = live[rid]
            longer = Request(rid, old.arrival_s, old.prompt_tokens, done + rng.randint(1, 300))
            r.abort(rid, t)
            r.resume(longer, done, t)
            live[rid] = longer
        check(r)
    r.run_until_idle()
    assert set(live) <= set(r.recorder.finished)
    assert not aborted & set(r.recorder.finished)
    assert r.used_blocks == 0 and r.idle
