"""Routers users would pick instead of Block, each following its project's published rule.

Each policy is given only what its router really has: the engines' scraped gauges (running,
waiting, KV usage), its own in-flight counts, and its own approximate memory of which prompt
blocks it sent where (`router_memory`; the views' `routed_*` figures, filled because each
declares a `prefix_index`). None reads a prediction or the twin's exact prefix hit. Each
docstring names the source read (project, file, snapshot) and the constants taken from it;
the code is ours. A view's `load` (running + waiting + not yet visible) stands in for the
router-side in-flight request counters of SGLang and AIBrix: one router that sees every
dispatch counts the same requests. Requests are taken to stream: in-flight prompt tokens are
released at the first token, as llm-d and Dynamo release them.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from block.simulator.policies import Policy, ReplicaView, RouteRequest
from block.simulator.prefix_index import PrefixIndexConfig


def _all(num_replicas: int) -> Sequence[int]:
    return range(num_replicas)


def _best(
    views: Sequence[ReplicaView], key: Callable[[ReplicaView], float], rng: random.Random
) -> int:
    """Index of the view with the highest key; exact ties drawn at random, as the projects'
    pickers shuffle before they sort."""
    scored = [(key(v), v) for v in views]
    top = max(k for k, _ in scored)
    return rng.choice([v for k, v in scored if k == top]).index


def _match_ratio(cfg: PrefixIndexConfig, req: RouteRequest, v: ReplicaView) -> float:
    """Matched index blocks over the prompt's index blocks (0 for a prompt shorter than one)."""
    total = cfg.prompt_blocks(req.prompt_tokens, v.block_size)
    if total == 0:
        return 0.0
    return min(1.0, v.routed_prefix_tokens / cfg.index_block_tokens(v.block_size) / total)


# The routers' own prefix memories, as each project ships it.
# llm-d's approximate prefix-cache producer (llm-d-router `pkg/epp/framework/plugins/
# requestcontrol/dataproducer/approximateprefix`, 2026-08): blocks of the engine's size but at
# least 64 tokens, one LRU per pod sized by the pod's KV block count (autoTune, the default);
# maxPrefixTokensToMatch 131072 by default, 40960 in the optimized-baseline guide.
LLMD_SCORERS_INDEX = PrefixIndexConfig(block_tokens=64, max_tokens=131072)
LLMD_BASELINE_INDEX = PrefixIndexConfig(block_tokens=64, max_tokens=40960)
# Dynamo without KV events (`router_ttl_secs` 120, `router_max_tree_size` 2^20 blocks, engine
# block size). The tree bound is global in Dynamo, per replica here: it never binds in runs
# of this size either way.
DYNAMO_APPROX_INDEX = PrefixIndexConfig(capacity_blocks=1 << 20, ttl_s=120.0)
# AIBrix's prefix hash table: 128-character blocks (about 32 tokens), 200,000 blocks in one
# LRU for all pods (per replica here), entries evicted 20 minutes after their last use.
AIBRIX_INDEX = PrefixIndexConfig(block_tokens=32, capacity_blocks=200_000, ttl_s=20 * 60.0)
# SGLang's router-side radix tree: 2^26 characters per worker, about 2^20 16-token blocks.
SGLANG_TREE = PrefixIndexConfig(capacity_blocks=1 << 20)


@dataclass(frozen=True)
class LlmdScorers:
    """llm-d's weighted scorers: queue depth 2, KV-cache utilisation 2, prefix cache 3.

    Source: llm-d/llm-d-router `pkg/epp/config/loader/defaults.go` (`loadDefaultConfig`,
    snapshot 2026-08-22, ebab6879, v0.10.0+62) and the chart's `default-plugins.yaml`
    (`config/charts/routerlib/templates/_config.yaml`); the same 2/2/3 profile is llm-d's
    2025 inference-scheduling well-lit path (llm-d/llm-d `guides/inference-scheduling/
    scheduler/inference-scheduling.values.yaml`). Scorers, each in [0, 1]:

    * `queue-scorer` (`scorer/queuedepth/queue.go`): (max - w) / (max - min) over the
      candidates' scraped waiting queues w, 1.0 for all when they are equal;
    * `kv-cache-utilization-scorer` (`scorer/kvcacheutilization`): 1 - KV usage;
    * `prefix-cache-scorer` (`scorer/prefix/README.md`, matchLengthWeight 0): matched blocks
      / prompt blocks of the approximate index (64-token blocks, per-pod LRU of the pod's KV
      block count, at most 131072 prompt tokens hashed).

    Highest weighted sum wins (`scheduling/scheduler_profile.go`); the max-score picker
    breaks ties at random (`picker/maxscore`).
    """

    queue_weight: float = 2.0
    kv_weight: float = 2.0
    prefix_weight: float = 3.0
    name: str = "llm-d-scorers"
    needs_prediction: bool = False
    needs_load: bool = True
    prefix_index: PrefixIndexConfig = LLMD_SCORERS_INDEX

    def candidates(self, num_replicas: int, rng: random.Random) -> Sequence[int]:
        return _all(num_replicas)

    def choose(self, req: RouteRequest, views: Sequence[ReplicaView], rng: random.Random) -> int:
        cfg = self.prefix_index
        lo = min(v.num_waiting for v in views)
        hi = max(v.num_waiting for v in views)

        def score(v: ReplicaView) -> float:
            queue = 1.0 if hi == lo else (hi - v.num_waiting) / (hi - lo)
            kv = min(1.0, max(0.0, 1.0 - v.kv_usage))
            return (
                self.queue_weight * queue
                + self.kv_weight * kv
                + self.prefix_weight * _match_ratio(cfg, req, v)
            )

        return _best(views, score, rng)


@dataclass(frozen=True)
class LlmdDefault:
    """llm-d's 2026 optimized baseline: a prefix-cache affinity filter with an in-flight
    token limit, then the token-load scorer.

    Source: llm-d/llm-d `guides/optimized-baseline/router/optimized-baseline.values.yaml`
    (2026): approx-prefix-cache-producer (maxPrefixTokensToMatch 40960), inflight-load-producer
    (defaults: prompt tokens only), prefix-cache-affinity-filter (affinityThreshold 0.80,
    maxTokensInFlightPenalty 286720, maxTTFTPenaltyMs 0), token-load-scorer (default).
    Rules, from llm-d/llm-d-router (snapshot 2026-08-22):

    * filter (`scheduling/filter/prefixcacheaffinity/plugin.go`, the token gate of #1024,
      2026-05-20): keep only the sticky replicas, whose match ratio (matched / prompt
      blocks) is >= 0.80; keep all when none is sticky, or when the least-loaded sticky
      replica has more than 286,720 in-flight tokens above the least-loaded other one.
      (Since #1547 the same gate is read as time, in-flight tokens / 15,928 tok/s against
      18,000 ms = 286,704 tokens; exploration is 0 by default since #1664.)
    * in-flight tokens (`requestcontrol/dataproducer/inflightload`): uncached prompt tokens
      of requests sent to the replica, released at the first streamed chunk.
    * scorer (`scheduling/scorer/tokenload/token_load.go`): 1 - min(1, (in-flight tokens +
      this request's uncached tokens) / 4,194,304); highest wins, random ties.
    """

    affinity_threshold: float = 0.80
    max_inflight_token_gap: int = 286_720
    queue_threshold_tokens: int = 4_194_304
    name: str = "llm-d-default"
    needs_prediction: bool = False
    needs_load: bool = True
    prefix_index: PrefixIndexConfig = LLMD_BASELINE_INDEX

    def candidates(self, num_replicas: int, rng: random.Random) -> Sequence[int]:
        return _all(num_replicas)

    def sticky(self, req: RouteRequest, views: Sequence[ReplicaView]) -> Sequence[ReplicaView]:
        """What the affinity filter passes on to the scorer."""
        cfg = self.prefix_index
        if len(views) <= 1:
            return views
        sticky = [v for v in views if _match_ratio(cfg, req, v) >= self.affinity_threshold]
        if not sticky:
            return views
        chosen = {v.index for v in sticky}
        others = [v for v in views if v.index not in chosen]
        if others:
            gap = min(v.routed_prefill_tokens for v in sticky) - min(
                v.routed_prefill_tokens for v in others
            )
            if gap > self.max_inflight_token_gap:
                return views  # the cache-warm replicas are too busy: stickiness breaks
        return sticky

    def choose(self, req: RouteRequest, views: Sequence[ReplicaView], rng: random.Random) -> int:
        limit = self.queue_threshold_tokens

        def score(v: ReplicaView) -> float:
            uncached = max(0, req.prompt_tokens - v.routed_prefix_tokens)
            tokens = v.routed_prefill_tokens + uncached
            return 1.0 if tokens <= 0 else 1.0 - min(tokens, limit) / limit

        return _best(self.sticky(req, views), score, rng)


@dataclass(frozen=True)
class DynamoKv:
    """Dynamo's KV router: lowest cost = prefill blocks after prefix overlap + decode blocks.

    Source: ai-dynamo/dynamo `lib/kv-router/src/scheduling/selector/default.rs`
    (`DefaultWorkerScorer::worker_logit`) with `KvRouterConfig::default` in
    `lib/kv-router/src/scheduling/config.rs` (2026):

        cost = prefill_load_scale * max(0, raw_prefill_blocks
                                           - overlap_score_credit * overlap_blocks)
               + decode_blocks + decode_active_request_weight * active_requests

    with overlap_score_credit 1.0 (the former `--kv-overlap-score-weight`, default 1),
    prefill_load_scale 1.0, decode_active_request_weight 0, router_temperature 0 (lowest
    cost, ties at random). raw_prefill_blocks = (prefill tokens the router has in flight on
    the worker + this prompt) / block size. decode_blocks = `potential_decode_blocks`
    (`WorkerLoadProjection`): the distinct prompt blocks of the worker's active requests
    (router_track_active_blocks, assume_kv_reuse on; output blocks not tracked) plus this
    request's blocks (ceil(prompt / block size)) not already shared with them. Overlap comes
    from the approximate indexer Dynamo runs without KV events (`--no-kv-events`: engine-
    sized blocks, TTL 120 s, tree of at most 2^20 blocks); by default Dynamo reads the
    engines' KV events instead, an exact signal this policy is not given.
    """

    overlap_score_credit: float = 1.0
    prefill_load_scale: float = 1.0
    name: str = "dynamo-kv"
    needs_prediction: bool = False
    needs_load: bool = True
    prefix_index: PrefixIndexConfig = DYNAMO_APPROX_INDEX

    def candidates(self, num_replicas: int, rng: random.Random) -> Sequence[int]:
        return _all(num_replicas)

    def cost(self, req: RouteRequest, v: ReplicaView) -> float:
        bs = v.block_size
        overlap = v.routed_prefix_tokens // bs
        raw_prefill = (v.routed_prefill_tokens + req.prompt_tokens) / bs
        prefill = max(0.0, raw_prefill - self.overlap_score_credit * overlap)
        new_blocks = max(0, math.ceil(req.prompt_tokens / bs) - v.routed_shared_blocks)
        return self.prefill_load_scale * prefill + v.routed_active_blocks + new_blocks

    def choose(self, req: RouteRequest, views: Sequence[ReplicaView], rng: random.Random) -> int:
        return _best(views, lambda v: -self.cost(req, v), rng)


@dataclass(frozen=True)
class AibrixPrefix:
    """AIBrix's prefix-cache router.

    Source: vllm-project/aibrix `pkg/plugins/gateway/algorithms/prefix_cache.go`
    (`routeOriginal`, `getTargetPodListOnLoadImbalance`, `getTargetPodFromMatchedPods`),
    `least_request.go`, `util.go` and `pkg/utils/prefixcacheindexer/hash.go` (snapshot
    2026-08-22, e3e10f9e, after v0.7.0); constants as the shipped gateway manifests set them
    (`config/gateway/gateway-plugin/gateway-plugin.yaml`, `config/overlays/release/`) and
    `prefix_cache_readme.md` documents them: imbalance count 16, standard-deviation factor 2,
    128-character blocks (about 32 tokens), 200,000 blocks, 20-minute eviction. (The Go
    defaults, used without those variables, are 8 and 1.) Rule:

    * running requests differ by more than 16 (max - min): only the least-loaded replicas
      are candidates;
    * among candidates matching at least one block, order by match percent ((matched
      blocks * 100) // prompt blocks) descending, then running requests ascending (random
      among equals), and take the first whose running requests are <= mean + 2 sigma of all
      replicas' (sample standard deviation);
    * otherwise, the least-loaded replica (random among equals).
    """

    imbalance_abs_count: int = 16
    sigma_factor: float = 2.0
    name: str = "aibrix-prefix"
    needs_prediction: bool = False
    needs_load: bool = True
    prefix_index: PrefixIndexConfig = AIBRIX_INDEX

    def candidates(self, num_replicas: int, rng: random.Random) -> Sequence[int]:
        return _all(num_replicas)

    def choose(self, req: RouteRequest, views: Sequence[ReplicaView], rng: random.Random) -> int:
        cfg = self.prefix_index
        loads = [v.load for v in views]
        lo = min(loads)
        pool = views
        if max(loads) - lo > self.imbalance_abs_count:
            pool = [v for v in views if v.load == lo]

        def percent(v: ReplicaView) -> int:
            total = cfg.prompt_blocks(req.prompt_tokens, v.block_size)
            if total == 0:
                return 0
            matched = v.routed_prefix_tokens // cfg.index_block_tokens(v.block_size)
            return min(matched, total) * 100 // total

        matched = [v for v in pool if percent(v) > 0]
        if matched:
            sd = statistics.stdev(loads) if len(loads) > 1 else 0.0
            limit = statistics.fmean(loads) + self.sigma_factor * sd
            shuffled = rng.sample(matched, len(matched))
            for v in sorted(shuffled, key=lambda v: (-percent(v), v.load)):
                if v.load <= limit:
                    return v.index
        return rng.choice([v for v in views if v.load == lo]).index


@dataclass(frozen=True)
class SglangCacheAware:
    """SGLang's cache-aware router (sgl-model-gateway).

    Source: sgl-project/sglang `sgl-model-gateway/src/policies/cache_aware.rs`
    (`select_worker`, `select_worker_min_load`, `select_worker_with_text`; 2026) with the
    launcher's defaults in `sgl-model-gateway/bindings/python/src/sglang_router/
    router_args.py`: cache_threshold 0.3, balance_abs_threshold 64, balance_rel_threshold
    1.5, max_tree_size 2^26 characters per worker. Rule:

    * imbalanced when max - min > 64 AND max > 1.5 * min (router in-flight requests): the
      least-loaded replica;
    * else the match rate of the longest prefix any replica holds in the router's tree,
      matched / prompt length; above 0.3 (strictly), the replica holding it;
    * else the least-loaded replica. (The file's header comment still says "smallest tree
      size", the rule of the older sgl-router's `get_smallest_tenant`; the code routes to the
      minimum load.)

    The real tree is a character radix tree; here it is the engine-block index (2^26
    characters is about 2^20 16-token blocks). Among replicas holding the longest match,
    the least loaded (the gateway takes whichever tenant the tree node lists first); the
    least-loaded choice takes the first in order, as `min_by_key` does.
    """

    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5
    name: str = "sglang-cache-aware"
    needs_prediction: bool = False
    needs_load: bool = True
    prefix_index: PrefixIndexConfig = SGLANG_TREE

    def candidates(self, num_replicas: int, rng: random.Random) -> Sequence[int]:
        return _all(num_replicas)

    def imbalanced(self, views: Sequence[ReplicaView]) -> bool:
        lo = min(v.load for v in views)
        hi = max(v.load for v in views)
        return hi - lo > self.balance_abs_threshold and hi > lo * self.balance_rel_threshold

    def choose(self, req: RouteRequest, views: Sequence[ReplicaView], rng: random.Random) -> int:
        least = min(views, key=lambda v: v.load)
        if self.imbalanced(views) or req.prompt_tokens <= 0:
            return least.index
        best = max(v.routed_prefix_tokens for v in views)
        if best / req.prompt_tokens > self.cache_threshold:
            holders = [v for v in views if v.routed_prefix_tokens == best]
            return min(holders, key=lambda v: v.load).index
        return least.index


BASELINES: dict[str, Callable[[], Policy]] = {
    "llm-d-scorers": LlmdScorers,
    "llm-d-default": LlmdDefault,
    "dynamo-kv": DynamoKv,
    "aibrix-prefix": AibrixPrefix,
    "sglang-cache-aware": SglangCacheAware,
}
