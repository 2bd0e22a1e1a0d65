"""Invariants of the replica scheduler, checked after every step on random workloads."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from block.simulator import replica as replica_mod
from block.simulator.latency import LatencyModel
from block.simulator.replica import Replica, ReplicaConfig
from block.simulator.requests import Request


def make_requests(seed: int, n: int, qps: float, max_prompt: int, max_out: int) -> list[Request]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(qps)
        out.append(Request(i, t, rng.randint(1, max_prompt), rng.randint(1, max_out)))
    return out


def held_blocks(r: Replica) -> int:
    """KV blocks the running requests hold, recomputed from scratch. During a step in flight
    each decoding request already holds the slot for the token it is computing."""
    in_step = 1 if isinstance(r.inflight, replica_mod._Mixed) and r.inflight.n else 0
    total = 0
    for entry in r.running.values():
        if isinstance(entry, replica_mod._Prefill):
            total += entry.blocks
        else:
            total += -(-(entry.key + r.g + in_step) // r.config.block_size)
    return total


def drive(r: Replica, reqs: list[Request], check: bool = True) -> None:
    """Feed arrivals and complete steps one by one, checking invariants between steps."""
    cfg = r.config
    pending = list(reqs)
    while pending or r.inflight is not None:
        nxt = r.next_event_s
        if pending and (nxt is None or pending[0].arrival_s < nxt):
            req = pending.pop(0)
            r.submit(req, req.arrival_s)
        else:
            assert nxt is not None
            r.advance_to(nxt)
        if not check:
            continue
        assert r.num_running <= cfg.max_num_seqs
        assert 0 <= r.used_blocks <= r.num_blocks
        step = r.inflight
        if isinstance(step, replica_mod._Mixed):
            tokens = step.n + sum(num for _, num in step.chunks)
            assert tokens <= cfg.max_num_batched_tokens
            assert r.used_blocks == held_blocks(r)
        elif step is None:
            assert r.used_blocks == held_blocks(r)


CONFIGS = [
    ReplicaConfig("vllm", 512, 48, num_blocks=400, max_run_steps=1),
    ReplicaConfig("sarathi", 512, 32, num_blocks=400, max_run_steps=1),
    ReplicaConfig("vllm", 256, 128, num_blocks=2000, max_run_steps=1),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.scheduler}-{c.max_num_seqs}")
def test_budget_batch_cap_and_kv_hold_every_step(latency: LatencyModel, cfg: ReplicaConfig) -> None:
    r = Replica(latency, cfg)
    reqs = make_requests(seed=3, n=400, qps=6.0, max_prompt=1500, max_out=800)
    drive(r, reqs)
    assert r.num_preemptions > 0, "the tight KV budget should force preemptions"
    assert r.used_blocks == 0, "every block comes back once all requests are done"


def test_every_request_finishes_exactly_once_in_order(latency: LatencyModel) -> None:
    r = Replica(latency, ReplicaConfig("vllm", 512, 48, num_blocks=400, max_run_steps=1))
    reqs = make_requests(seed=5, n=300, qps=5.0, max_prompt=1200, max_out=600)
    finished: list[int] = []
    r.on_step = lambda t, emitted, done: finished.extend(done)
    drive(r, reqs, check=False)
    assert sorted(finished) == [q.rid for q in reqs]
    rec = r.recorder
    for q in reqs:
        assert q.arrival_s <= rec.scheduled[q.rid] < rec.first_token[q.rid] <= rec.finished[q.rid]


def test_admission_is_fcfs(latency: LatencyModel) -> None:
    r = Replica(latency, ReplicaConfig("vllm", 512, 16))
    reqs = make_requests(seed=7, n=200, qps=20.0, max_prompt=800, max_out=300)
    drive(r, reqs, check=False)
    order = sorted(reqs, key=lambda q: (r.recorder.scheduled[q.rid], q.rid))
    assert [q.rid for q in order] == [q.rid for q in reqs]


def test_tokens_stream_once_per_step_and_match_lengths(latency: LatencyModel) -> None:
    r = Replica(latency, ReplicaConfig("vllm", 2048, 64, max_run_steps=1))
    reqs = make_requests(seed=9, n=50, qps=4.0, max_prompt=600, max_out=200)
    counts: dict[int, int] = {}

    def hook(t: float, emitted: list[int], done: list[int]) -> None:
        assert len(set(emitted)) == len(emitted)
        for rid in emitted:
            counts[rid] = counts.get(rid, 0) + 1

    r.on_step = hook
    drive(r, reqs, check=False)
    assert counts == {q.rid: q.output_tokens for q in reqs}


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    scheduler=st.sampled_from(["vllm", "sarathi"]),
    blocks=st.integers(300, 3000),
)
def test_decode_runs_equal_step_by_step(
    latency: LatencyModel, seed: int, scheduler: str, blocks: int
) -> None:
    """Skipping identical decode steps analytically changes nothing observable."""
    reqs = make_requests(seed, 150, 3.0, 1500, 700)
    results = []
    for steps in (1 << 30, 1):
        cfg = ReplicaConfig(scheduler, 512, 48, num_blocks=blocks, max_run_steps=steps)  # type: ignore[arg-type]
        r = Replica(latency, cfg)
        for q in reqs:
            r.submit(q, q.arrival_s)
        r.run_until_idle()
        results.append((r.recorder, r.num_steps, r.num_preemptions))
    (a, steps_a, pre_a), (b, steps_b, pre_b) = results
    assert steps_a == steps_b and pre_a == pre_b
    for q in reqs:
        assert a.finished[q.rid] == pytest.approx(b.finished[q.rid], abs=1e-9)
        assert a.first_token[q.rid] == pytest.approx(b.first_token[q.rid], abs=1e-9)


def test_fork_never_mutates_parent(latency: LatencyModel) -> None:
    r = Replica(latency, ReplicaConfig("vllm", 512, 48))
    reqs = make_requests(seed=11, n=120, qps=30.0, max_prompt=1000, max_out=500)
    for q in reqs[:100]:
        r.submit(q, q.arrival_s)
    now = reqs[99].arrival_s

    def fingerprint(x: Replica) -> tuple[object, ...]:
        prefills = [(p.req.rid, p.computed, p.blocks) for p in x.prefills]
        return (
            x.now, x.g, x.n_dec, x.sum_key, x.used_blocks, tuple(x.residues), list(x.running),
            list(x.waiting), prefills, len(x.finish_heap), x.next_event_s,
            dict(x.recorder.finished), dict(x.recorder.first_token),
        )  # fmt: skip

    before = fingerprint(r)
    child = r.fork()
    for q in reqs[100:]:
        child.submit(q, max(q.arrival_s, now))
    child.run_until_idle()
    assert fingerprint(r) == before
    assert len(child.recorder.finished) >= 20


def test_rejects_requests_that_cannot_fit(latency: LatencyModel) -> None:
    from block.errors import InvalidRequest

    r = Replica(latency, ReplicaConfig("vllm", 512, 48))
    with pytest.raises(InvalidRequest, match="context"):
        r.submit(Request(1, 0.0, 4000, 200), 0.0)
    with pytest.raises(InvalidRequest):
        r.submit(Request(2, 0.0, 0, 10), 0.0)


def test_step_records_cover_every_step(latency: LatencyModel) -> None:
    r = Replica(latency, ReplicaConfig("sarathi", 512, 48))
    r.step_log = []
    reqs = make_requests(seed=13, n=200, qps=8.0, max_prompt=1200, max_out=500)
    for q in reqs:
        r.submit(q, q.arrival_s)
    r.run_until_idle()
    log = r.step_log
    assert sum(s.steps for s in log) == r.num_steps
    assert sum(s.prefill_tokens for s in log) == sum(q.prompt_tokens for q in reqs)
    assert all(a.end_s <= b.start_s + 1e-9 for a, b in itertools.pairwise(log))
    assert all(0 <= s.kv_used_blocks <= r.num_blocks for s in log)
    assert any(s.steps > 1 for s in log), "decode runs are recorded as one entry"


def test_waiting_token_counter_matches_queue(latency: LatencyModel) -> None:
    r = Replica(latency, ReplicaConfig("vllm", 512, 16, num_blocks=400))
    reqs = make_requests(seed=17, n=300, qps=20.0, max_prompt=1500, max_out=600)
    for q in reqs:
        r.submit(q, q.arrival_s)
        assert r.waiting_tokens == sum(x.prompt_tokens + g for x, g in r.waiting)
    assert r.num_preemptions > 0
    while r.inflight is not None:
        r.advance_to(r.inflight.end_s)
        assert r.waiting_tokens == sum(x.prompt_tokens + g for x, g in r.waiting)
