"""Automatic prefix caching in the replica model: hits, sharing, eviction, accounting."""

from __future__ import annotations

import random

import pytest

from block.simulator import replica as replica_mod
from block.simulator.latency import LatencyModel
from block.simulator.prediction import predict_one_more
from block.simulator.prefix_cache import PrefixCache, chain_hashes
from block.simulator.replica import Replica, ReplicaConfig
from block.simulator.requests import Request


def conversation_requests(seed: int, n: int, system_tokens: int) -> list[Request]:
    """Requests that share a system prompt and sometimes re-send an earlier request's text."""
    rng = random.Random(seed)
    system = [rng.randrange(32000) for _ in range(system_tokens)]
    t, out, history = 0.0, [], []
    for i in range(n):
        t += rng.expovariate(8.0)
        # A follow-up turn re-sends a whole earlier sequence; a new one starts from the system.
        base = rng.choice(history) if history and rng.random() < 0.4 else system
        prompt = base + [rng.randrange(32000) for _ in range(rng.randint(1, 300))]
        output = [rng.randrange(32000) for _ in range(rng.randint(1, 200))]
        history.append(prompt + output)
        hashes = tuple(chain_hashes(prompt + output, 16))
        out.append(Request(i, t, len(prompt), len(output), hashes))
    return out


def check_accounting(r: Replica) -> None:
    cache = r.cache
    assert cache is not None
    private = 0
    holders: dict[int, int] = {}
    for entry in r.running.values():
        if isinstance(entry, replica_mod._Prefill):
            total = entry.blocks
        else:
            in_step = 1 if isinstance(r.inflight, replica_mod._Mixed) and r.inflight.n else 0
            total = -(-(entry.key + r.g + in_step) // r.config.block_size)
        private += total - len(entry.shared)
        for h in entry.shared:
            holders[h] = holders.get(h, 0) + 1
    assert holders == cache.refs
    assert r.used_blocks == private + len(cache.refs)
    assert len(cache.evictable) <= r.num_blocks - r.used_blocks
    assert not set(cache.refs) & set(cache.evictable)


@pytest.mark.parametrize("kind", ["vllm", "sarathi"])
@pytest.mark.parametrize("blocks", [300, 5000])
def test_accounting_holds_every_step(latency: LatencyModel, kind: str, blocks: int) -> None:
    r = Replica(latency, ReplicaConfig(kind, 512, 32, num_blocks=blocks, max_run_steps=1))  # type: ignore[arg-type]
    reqs = conversation_requests(seed=1, n=250, system_tokens=200)
    pending = list(reqs)
    while pending or r.inflight is not None:
        nxt = r.next_event_s
        if pending and (nxt is None or pending[0].arrival_s < nxt):
            q = pending.pop(0)
            r.submit(q, q.arrival_s)
        else:
            assert nxt is not None
            r.advance_to(nxt)
        if r.inflight is None or isinstance(r.inflight, replica_mod._Mixed):
            check_accounting(r)
    assert len(r.recorder.finished) == len(reqs)
    assert sum(r.recorder.cached_tokens.values()) > 0
    assert r.used_blocks == 0


def test_hits_skip_prefill_and_cut_ttft(latency: LatencyModel) -> None:
    tokens = list(range(2000))
    hashes = tuple(chain_hashes(tokens + [7] * 50, 16))
    r = Replica(latency, ReplicaConfig("vllm", 512, 32))
    r.submit(Request(1, 0.0, 2000, 50, hashes), 0.0)
    r.run_until_idle()
    first_ttft = r.recorder.first_token[1]
    r.submit(Request(2, 10.0, 2000, 50, hashes), 10.0)
    r.run_until_idle()
    assert r.recorder.cached_tokens[2] == 1984  # all full blocks but the last one
    assert r.recorder.first_token[2] - 10.0 < first_ttft / 3
    cold = predict_one_more(r, 2000, 50, 20.0)
    warm = predict_one_more(r, 2000, 50, 20.0, block_hashes=hashes)
    assert warm.ttft_s < cold.ttft_s / 3


def test_lru_eviction_order() -> None:
    cache = PrefixCache()
    for h in (1, 2, 3):
        assert cache.register(h)
    assert cache.release([2, 1, 3]) == 3
    cache.evict(2)
    assert list(cache.evictable) == [3]
    assert cache.match([3, 1], 5) == (1, 1)
    assert not cache.register(3)  # same content already cached: kept private


def test_chain_hashes_are_prefix_sensitive() -> None:
    a = chain_hashes(list(range(64)), 16)
    b = chain_hashes([*range(16), 999, *range(17, 64)], 16)
    assert len(a) == 4 and a[0] == b[0] and a[1] != b[1] and a[3] != b[3]
    assert len(chain_hashes(list(range(20)), 16)) == 1  # partial blocks are not hashed
