"""Baseline routers (llm-d, Dynamo, AIBrix, SGLang) on constructed views, the router-side
prefix index and ledger they read, and short cluster runs over shared prefixes."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from block.errors import ConfigError
from block.simulator import baselines, cluster, conversations, policies
from block.simulator.latency import LatencyModel
from block.simulator.prefix_cache import chain_hashes
from block.simulator.prefix_index import PrefixIndex, PrefixIndexConfig, prompt_hashes
from block.simulator.replica import Replica, ReplicaConfig
from block.simulator.requests import Request
from block.simulator.router_memory import RoutedFigures, RouterMemory

NAMES = ("llm-d-scorers", "llm-d-default", "dynamo-kv", "aibrix-prefix", "sglang-cache-aware")


def rng() -> random.Random:
    return random.Random(0)


def view(
    i: int,
    *,
    running: int = 0,
    waiting: int = 0,
    used: int = 0,
    prefix: int = 0,
    prefill: int = 0,
    active: int = 0,
    shared: int = 0,
) -> policies.ReplicaView:
    return policies.ReplicaView(
        i,
        running,
        waiting,
        used,
        1000,
        block_size=16,
        routed_prefix_tokens=prefix,
        routed_prefill_tokens=prefill,
        routed_active_blocks=active,
        routed_shared_blocks=shared,
    )


def req(prompt: int) -> policies.RouteRequest:
    return policies.RouteRequest(prompt_tokens=prompt, output_tokens=32)


# ---------------------------------------------------------------- prefix index


def test_index_matches_leading_blocks_per_replica() -> None:
    index: PrefixIndex[int] = PrefixIndex(PrefixIndexConfig(), block_size=16)
    index.observe(0, [1, 2, 3, 4], 0.0, kv_blocks=100)
    index.observe(1, [1, 2, 9], 0.0, kv_blocks=100)
    assert index.match([1, 2, 3, 5], 1.0) == {0: 48, 1: 32}
    assert index.match([7, 2, 3], 1.0) == {}  # a chain hash names its whole prefix


def test_index_with_coarser_blocks_keys_every_nth_chain_hash() -> None:
    """llm-d hashes 64-token blocks over the engine's 16-token chain: every 4th hash."""
    cfg = PrefixIndexConfig(block_tokens=64)
    assert cfg.index_block_tokens(16) == 64 and cfg.prompt_blocks(200, 16) == 3
    assert cfg.index_block_tokens(128) == 128  # never finer than the engine's block
    index: PrefixIndex[int] = PrefixIndex(cfg, block_size=16)
    chain = list(range(100, 108))  # 8 engine blocks = 2 index blocks
    index.observe(0, chain, 0.0, kv_blocks=100)
    assert index.size(0) == 2
    assert index.match(chain, 0.0) == {0: 128}
    assert index.match(chain[:7], 0.0) == {0: 64}  # the second index block is not full
    assert index.match([*chain[:4], 1, 2, 3, 4], 0.0) == {0: 64}


def test_index_memory_is_bounded_least_recently_routed_first() -> None:
    index: PrefixIndex[int] = PrefixIndex(PrefixIndexConfig(capacity_blocks=4), block_size=16)
    index.observe(0, [1, 2, 3, 4], 0.0, kv_blocks=1000)
    index.observe(0, [1, 2], 1.0, kv_blocks=1000)  # 1, 2 routed again: now the freshest
    index.observe(0, [10, 11], 2.0, kv_blocks=1000)  # evicts 3 and 4
    assert index.size(0) == 4
    assert index.match([1, 2, 3, 4], 3.0) == {0: 32}
    assert index.match([10, 11], 3.0) == {0: 32}
    # No configured bound: the replica's KV block count (llm-d's auto-tune).
    auto: PrefixIndex[int] = PrefixIndex(PrefixIndexConfig(), block_size=16)
    auto.observe(0, list(range(50)), 0.0, kv_blocks=8)
    assert auto.size(0) == 8
    index.forget(0)
    assert index.match([10, 11], 3.0) == {}


def test_index_entries_expire_after_their_ttl() -> None:
    index: PrefixIndex[int] = PrefixIndex(PrefixIndexConfig(ttl_s=120.0), block_size=16)
    index.observe(0, [1, 2], 0.0, kv_blocks=100)
    assert index.match([1, 2], 120.0) == {0: 32}
    assert index.match([1, 2], 120.5) == {}
    index.observe(0, [1], 121.0, kv_blocks=100)  # routing again refreshes
    assert index.match([1, 2], 200.0) == {0: 16}


def test_index_caps_tokens_and_rejects_nonsense() -> None:
    index: PrefixIndex[int] = PrefixIndex(PrefixIndexConfig(max_tokens=32), block_size=16)
    index.observe(0, [1, 2, 3, 4], 0.0, kv_blocks=100)
    assert index.size(0) == 2 and index.match([1, 2, 3, 4], 0.0) == {0: 32}
    assert prompt_hashes((1, 2, 3, 4, 5), prompt_tokens=40, block_size=16) == (1, 2)
    assert prompt_hashes(None, prompt_tokens=40, block_size=16) == ()
    for bad in ({"capacity_blocks": 0}, {"block_tokens": 0}, {"ttl_s": 0.0}):
        with pytest.raises(ConfigError):
            PrefixIndexConfig(**bad)  # type: ignore[arg-type]


def test_router_memory_counts_prefill_until_first_token_and_blocks_until_done() -> None:
    mem: RouterMemory[str] = RouterMemory(PrefixIndexConfig(), block_size=16)
    mem.dispatched("a", 1, [1, 2, 3], prompt_tokens=60, now=0.0, kv_blocks=100)
    a, b = mem.figures(["a", "b"], [1, 2, 5], 0.0)
    assert a == RoutedFigures(prefix_tokens=32, prefill_tokens=60, active_blocks=3, shared_blocks=2)
    assert b == RoutedFigures()
    # The second prompt extends the first: 48 tokens are believed cached, 22 left to compute.
    mem.dispatched("a", 2, [1, 2, 3, 4], prompt_tokens=70, now=1.0, kv_blocks=100)
    assert mem.figures(["a"], [], 1.0)[0].prefill_tokens == 82
    mem.first_token(1)
    (a,) = mem.figures(["a"], [1, 2, 3, 4], 1.0)
    assert (a.prefill_tokens, a.active_blocks, a.shared_blocks) == (22, 4, 4)
    mem.finished(1)  # request 2 still holds all four blocks
    assert mem.figures(["a"], [], 1.0)[0].active_blocks == 4
    mem.finished(2)
    mem.finished(2)  # told twice: no harm
    assert mem.figures(["a"], [1], 1.0)[0] == RoutedFigures(prefix_tokens=16)
    # A retry replaces the first attempt; a replica that leaves takes its requests along.
    mem.dispatched("a", 3, [1, 2], prompt_tokens=40, now=2.0, kv_blocks=100)
    mem.dispatched("b", 3, [1, 2], prompt_tokens=40, now=2.0, kv_blocks=100)
    a, b = mem.figures(["a", "b"], [1, 2], 2.0)
    assert (a.prefill_tokens, a.active_blocks, b.prefill_tokens, b.active_blocks) == (0, 0, 40, 2)
    mem.forget("b")
    mem.finished(3)
    assert mem.figures(["b"], [1, 2], 2.0)[0] == RoutedFigures()


# ---------------------------------------------------------------- the rules


def test_registry_makes_each_baseline_with_its_index() -> None:
    for name in NAMES:
        p = policies.make_policy(name)
        assert p.name == name and p.prefix_index is not None and not p.needs_prediction
    assert policies.make_policy("least-requests").prefix_index is None


def test_llmd_scorers_weigh_queue_kv_and_prefix_two_two_three() -> None:
    p = policies.make_policy("llm-d-scorers")
    r = req(256)  # four 64-token index blocks
    # warm: worst queue (0), KV 60 % used (0.4), whole prompt matched (1): 0 + 0.8 + 3 = 3.8
    warm = view(0, waiting=4, used=600, prefix=256)
    cold = view(1, waiting=0, used=0)  # 2 + 2 + 0 = 4.0
    assert p.choose(r, [warm, cold], rng()) == 1
    cold = view(1, waiting=0, used=150)  # 2 + 1.7 = 3.7 (equal weights would still pick it)
    assert p.choose(r, [warm, cold], rng()) == 0
    # Equal queues score 1.0 each: the prefix alone decides, by match ratio.
    assert p.choose(r, [view(0, prefix=128), view(1, prefix=192)], rng()) == 1
    assert p.choose(r, [view(0, waiting=3, prefix=64), view(1, waiting=3)], rng()) == 0


def test_llmd_default_affinity_threshold_and_token_load_limit() -> None:
    p = baselines.LlmdDefault()
    r = req(320)  # five 64-token index blocks
    busy_warm = view(0, prefix=192, prefill=1000)  # 3/5 = 0.6: not sticky
    idle = view(1)
    assert p.choose(r, [busy_warm, idle], rng()) == 1  # token load: 1128 against 320
    busy_warm = view(0, prefix=256, prefill=1000)  # 4/5 = 0.8: sticky
    assert [v.index for v in p.sticky(r, [busy_warm, idle])] == [0]
    assert p.choose(r, [busy_warm, idle], rng()) == 0
    # The gate: stickiness breaks when the best sticky replica carries more than 286,720
    # in-flight tokens above the best other one.
    limit = p.max_inflight_token_gap
    assert limit == 286_720
    warm = view(0, prefix=320, prefill=limit + 50)
    assert p.choose(r, [warm, view(1, prefill=50)], rng()) == 0  # gap == limit: still sticky
    assert p.choose(r, [warm, view(1, prefill=49)], rng()) == 1  # gap > limit: lowest load
    assert list(p.sticky(r, [view(0), view(1)])) == [view(0), view(1)]  # none sticky: all


def test_dynamo_cost_is_prefill_after_overlap_plus_decode_blocks() -> None:
    p = baselines.DynamoKv()
    r = req(160)  # ten 16-token blocks
    # 8 blocks overlap, 320 prefill tokens in flight, 40 active blocks of which 8 are ours:
    # (320 + 160) / 16 - 8 = 22 prefill blocks; 40 + (10 - 8) = 42 decode blocks.
    loaded = view(0, prefix=128, prefill=320, active=40, shared=8)
    assert p.cost(r, loaded) == pytest.approx(64.0)
    empty = view(1)
    assert p.cost(r, empty) == pytest.approx(20.0)  # 10 prefill + 10 new blocks
    assert p.choose(r, [loaded, empty], rng()) == 1
    # Overlap credit 1: each cached block takes one block off the prefill cost.
    warm = view(0, prefix=128, active=8, shared=8)
    assert p.cost(r, warm) == pytest.approx(2 + 8 + 2)
    busy = view(2, active=5)  # other requests' blocks all count as decode load
    assert p.cost(r, busy) == pytest.approx(25.0)
    assert p.choose(r, [busy, warm, empty], rng()) == 0


def test_aibrix_imbalance_count_and_two_sigma_bound() -> None:
    p = baselines.AibrixPrefix()
    r = req(128)  # four 32-token index blocks
    # Running requests differ by 17 > 16: the least loaded, whatever it caches.
    assert p.choose(r, [view(0), view(1, running=17, prefix=128)], rng()) == 0
    # By 16: balanced; the match wins (mean 8 + 2 * 11.3 >= 16).
    assert p.choose(r, [view(0), view(1, running=16, prefix=128)], rng()) == 1
    # Imbalanced: the least-loaded replicas only, the best match among them.
    views = [view(0), view(1, prefix=64), view(2, running=20, prefix=128)]
    assert p.choose(r, views, rng()) == 1
    # Loads 0,0,0,0,10: mean 2, sample sigma 4.47; the full match at 10 is within
    # mean + 2 sigma (10.9) but not mean + 1 sigma (6.5).
    views = [view(0, prefix=64), view(1), view(2), view(3), view(4, running=10, prefix=128)]
    assert p.choose(r, views, rng()) == 4
    assert baselines.AibrixPrefix(sigma_factor=1).choose(r, views, rng()) == 0
    # No match anywhere: the least loaded.
    assert p.choose(r, [view(0, running=3), view(1, running=1), view(2, running=2)], rng()) == 1


def test_sglang_imbalance_needs_both_thresholds_and_match_above_point_three() -> None:
    p = baselines.SglangCacheAware()
    r = req(160)
    assert p.choose(r, [view(0), view(1, running=65, prefix=160)], rng()) == 0
    # max - min = 65 > 64 but 195 is not above 1.5 * 130: balanced, the cache decides.
    assert p.choose(r, [view(0, running=130), view(1, running=195, prefix=160)], rng()) == 1
    assert p.choose(r, [view(0, running=130), view(1, running=196, prefix=160)], rng()) == 0
    # Match rate 48/160 = 0.3 is not above the threshold: least loaded (not "smallest tree").
    assert p.choose(r, [view(0, running=3, prefix=48), view(1, running=1)], rng()) == 1
    assert p.choose(r, [view(0, running=3, prefix=64), view(1, running=1)], rng()) == 0
    # Among replicas holding the longest match, the less loaded.
    views = [view(0, running=5, prefix=64), view(1, running=2, prefix=64), view(2)]
    assert p.choose(r, views, rng()) == 1


# ---------------------------------------------------------------- whole clusters


def shared_prefix_requests(n: int, seed: int = 5) -> tuple[list[Request], list[int]]:
    """Two long fillers, then the first request of each of two prompt families while the
    fillers still run (so where a family starts is decided under unequal load), then, once
    all is quiet, `n` family requests 0.5 s apart (each done long before the next: equal,
    zero load). A family prompt is the family's 448-token prefix plus a 64-token tail of its
    own. Family -1: a filler."""
    gen = random.Random(seed)
    prefixes = [[1_000_000 * (f + 1) + t for t in range(448)] for f in range(2)]
    reqs: list[Request] = []
    family: list[int] = []

    def add(arrival_s: float, prompt: list[int], output_tokens: int, f: int) -> None:
        hashes = tuple(chain_hashes(prompt + [7] * output_tokens, 16))
        reqs.append(Request(len(reqs), arrival_s, len(prompt), output_tokens, hashes))
        family.append(f)

    for i in range(2):
        add(0.001 * i, [50_000_000 * (i + 1) + t for t in range(1500)], 300, -1)
    for i in range(n):
        f = i if i < 2 else gen.randrange(2)
        arrival_s = 0.002 + 0.001 * i if i < 2 else 15.0 + 0.5 * i
        add(arrival_s, prefixes[f] + [10_000 * (i + 1) + t for t in range(64)], 8, f)
    return reqs, family


@pytest.mark.parametrize("name", NAMES)
def test_cluster_sends_a_prefix_back_where_it_was_routed(name: str, latency: LatencyModel) -> None:
    reqs, family = shared_prefix_requests(200)
    reps = [Replica(latency, ReplicaConfig("vllm", 2048, 64), i) for i in range(3)]
    res = cluster.simulate_cluster(reps, policies.make_policy(name), reqs, seed=1)
    assert len(res.records) == len(reqs)
    replicas_of: dict[int, set[int]] = defaultdict(set)
    for rec in res.records:
        replicas_of[family[rec.rid]].add(rec.replica)
    # Every request of a family where the family's first went (least-requests, say, sends
    # the later ones to replica 0 instead).
    assert all(len(replicas_of[f]) == 1 for f in (0, 1)), replicas_of
    later = [rec for rec in res.records if rec.rid >= 4]
    assert all(rec.cached_tokens >= 448 for rec in later)


def test_sessions_feed_the_router_memory(latency: LatencyModel) -> None:
    """Multi-turn chat: each baseline finds the conversation it routed before, so it hits
    the prefix cache far more often than round-robin does."""
    sessions = conversations.sharegpt_sessions()[:40]

    def hit_rate(name: str) -> float:
        reps = [Replica(latency, ReplicaConfig("vllm", 2048, 64), i) for i in range(4)]
        policy = policies.make_policy(name)
        records = conversations.simulate_sessions(reps, policy, sessions, 2.0, 1.0, seed=3)
        assert len(records) == sum(len(s.turns) for s in sessions)
        return sum(r.cached_tokens for r in records) / sum(r.prompt_tokens for r in records)

    blind = hit_rate("round-robin")
    for name in NAMES:
        assert hit_rate(name) > blind + 0.1, name
