"""Global routing policies: pure choices over what the router can see of each replica.

A policy gets the request (sizes, SLOs) and one `ReplicaView` per candidate replica and
returns the index of the chosen replica. The offline cluster model and the live gateway build
the same views (from simulated replicas or from predictors and engine metrics), so both run the
same policy code.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from block.errors import ConfigError
from block.simulator.prediction import Prediction
from block.simulator.prefix_index import PrefixIndexConfig


@dataclass(frozen=True, slots=True)
class RouteRequest:
    prompt_tokens: int
    output_tokens: int  # the length estimate the policy may use
    slo_ttft_s: float | None = None
    slo_e2e_s: float | None = None


@dataclass(frozen=True, slots=True)
class ReplicaView:
    index: int
    num_running: int
    num_waiting: int
    kv_used_blocks: int
    kv_total_blocks: int
    waiting_prefill_tokens: int = 0
    block_size: int = 16
    inflight: int = 0  # dispatched by this router but not yet visible in the replica's figures
    prediction: Prediction | None = None
    prefix_hit_tokens: int = 0  # prompt tokens this replica holds in its prefix cache
    # The router's own memory (block.simulator.router_memory), filled only for policies with
    # a `prefix_index`: prompt tokens its approximate index matches here; uncached prompt
    # tokens it sent here still waiting for their first token; distinct prompt blocks of the
    # requests it sent here and not finished; how many of this prompt's blocks those hold.
    routed_prefix_tokens: int = 0
    routed_prefill_tokens: int = 0
    routed_active_blocks: int = 0
    routed_shared_blocks: int = 0

    @property
    def load(self) -> int:
        return self.num_running + self.num_waiting + self.inflight

    @property
    def kv_usage(self) -> float:
        return self.kv_used_blocks / max(1, self.kv_total_blocks)

    @property
    def freeness(self) -> float:
        """Llumnix's freeness: KV blocks left after queued prefills, per running request."""
        queued_blocks = -(-self.waiting_prefill_tokens // self.block_size)
        free = self.kv_total_blocks - self.kv_used_blocks - queued_blocks
        return free / max(1, self.num_running + self.inflight)


class Policy(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def needs_prediction(self) -> bool: ...

    @property
    def needs_load(self) -> bool:
        """Whether `choose` reads the views' load figures (a live router must fetch them)."""
        ...

    @property
    def prefix_index(self) -> PrefixIndexConfig | None:
        """The router-side memory `choose` reads (the views' `routed_*` figures), shaped as
        the policy's project ships it; None: the policy reads none."""
        ...

    def candidates(self, num_replicas: int, rng: random.Random) -> Sequence[int]:
        """Which replicas to look at (and ask for predictions)."""
        ...

    def choose(self, req: RouteRequest, views: Sequence[ReplicaView], rng: random.Random) -> int:
        """Index (ReplicaView.index) of the chosen replica; views is non-empty."""
        ...


def _all(num_replicas: int, rng: random.Random) -> Sequence[int]:
    return range(num_replicas)


def _least_loaded(views: Sequence[ReplicaView]) -> int:
    return min(views, key=lambda v: (v.load, v.kv_usage, v.index)).index


@dataclass
class RoundRobin:
    name: str = "round-robin"
    needs_prediction: bool = False
    needs_load: bool = False
    prefix_index: PrefixIndexConfig | None = None
    _next: int = 0

    def candidates(self, num_replicas: int, rng: random.Random) -> Sequence[int]:
        return _all(num_replicas, rng)

    def choose(self, req: RouteRequest, views: Sequence[ReplicaView], rng: random.Random) -> int:
        ordered = sorted(v.index for v in views)
        pick = next((i for i in ordered if i >= self._next), ordered[0])
        self._next = pick + 1
        return pick


@dataclass(frozen=True)
class Random:
    name: str = "random"
    needs_prediction: bool = False
    needs_load: bool = False
    prefix_index: PrefixIndexConfig | None = None

    def candidates(self, num_replicas: int, rng: random.Random) -> Sequence[int]:
        return _all(num_replicas, rng)

    def choose(self, req: RouteRequest, views: Sequence[ReplicaView], rng: random.Random) -> int:
        return rng.choice(views).index


@dataclass(frozen=True)
class LeastRequests:
    name: str = "least-requests"
    needs_prediction: bool = False
    needs_load: bool = True
    prefix_index: PrefixIndexConfig | None = None

    def candidates(self, num_replicas: int, rng: random.Random) -> Sequence[int]:
        return _all(num_replicas, rng)

    def choose(self, req: RouteRequest, views: Sequence[ReplicaView], rng: random.Random) -> int:
        return _least_loaded(views)


@dataclass(frozen=True)
class LeastKv:
    name: str = "least-kv"
    needs_prediction: bool = False
    needs_load: bool = True
    prefix_index: PrefixIndexConfig | None = None

    def candidates(self, num_replicas: int, rng: random.Random) -> Sequence[int]:
        return _all(num_replicas, rng)

    def choose(self, req: RouteRequest, views: Sequence[ReplicaView], rng: random.Random) -> int:
        return min(views, key=lambda v: (v.kv_usage, v.load, v.index)).index


@dataclass(frozen=True)
class Llumnix:
    name: str = "llumnix"
    needs_prediction: bool = False
    needs_load: bool = True
    prefix_index: PrefixIndexConfig | None = None

    def candidates(self, num_replicas: int, rng: random.Random) -> Sequence[int]:
        return _all(num_replicas, rng)

    def choose(self, req: RouteRequest, views: Sequence[ReplicaView], rng: random.Random) -> int:
        return max(views, key=lambda v: (v.freeness, -v.load, -v.index)).index


@dataclass(frozen=True)
class PowerOfK:
    """Sample k replicas at random, send to the least loaded of them."""

    k: int = 2
    name: str = "power-of-2"
    needs_prediction: bool = False
    needs_load: bool = True
    prefix_index: PrefixIndexConfig | None = None

    def candidates(self, num_replicas: int, rng: random.Random) -> Sequence[int]:
        return rng.sample(range(num_replicas), min(self.k, num_replicas))

    def choose(self, req: RouteRequest, views: Sequence[ReplicaView], rng: random.Random) -> int:
        return _least_loaded(views)


@dataclass(frozen=True)
class PrefixAffinity:
    """The simple routers' rule: the replica holding the longest cached prefix of the prompt,
    least loaded among equals (no weights, no prediction)."""

    name: str = "prefix-affinity"
    needs_prediction: bool = False
    needs_load: bool = True
    prefix_index: PrefixIndexConfig | None = None

    def candidates(self, num_replicas: int, rng: random.Random) -> Sequence[int]:
        return _all(num_replicas, rng)

    def choose(self, req: RouteRequest, views: Sequence[ReplicaView], rng: random.Random) -> int:
        return min(views, key=lambda v: (-v.prefix_hit_tokens, v.load, v.kv_usage, v.index)).index


# Predicted latencies closer than this (seconds) are equal for routing: far below a model
# step (milliseconds), far above a float's rounding noise.
LATENCY_TIE_S = 1e-6


@dataclass(frozen=True)
class Block:
    """Block: the replica with the lowest predicted e2e (or TTFT) for this request.

    With SLOs, replicas predicted to meet them are preferred; among those, the lowest
    predicted latency wins. `k` > 0 asks only k random replicas (power-of-k sampling).
    Replicas without a prediction are ignored; with none at all, falls back to least-loaded.
    """

    metric: str = "e2e"
    k: int = 0
    name: str = "block"
    needs_prediction: bool = True
    needs_load: bool = True
    prefix_index: PrefixIndexConfig | None = None

    def candidates(self, num_replicas: int, rng: random.Random) -> Sequence[int]:
        if 0 < self.k < num_replicas:
            return rng.sample(range(num_replicas), self.k)
        return range(num_replicas)

    def choose(self, req: RouteRequest, views: Sequence[ReplicaView], rng: random.Random) -> int:
        scored = [v for v in views if v.prediction is not None]
        if not scored:
            return _least_loaded(views)

        def latency(v: ReplicaView) -> float:
            p = v.prediction
            assert p is not None
            return p.ttft_s if self.metric == "ttft" else p.e2e_s

        if req.slo_ttft_s is not None or req.slo_e2e_s is not None:
            meeting = [v for v in scored if meets_slo(req, v.prediction)]
            if meeting:
                scored = meeting
        # Predictions within LATENCY_TIE_S of the best are a tie, broken by load then index:
        # identical replicas' simulations differ in the last bits of a float, and routing
        # must not follow that noise.
        lat = [latency(v) for v in scored]
        best = min(lat)
        tied = [v for v, x in zip(scored, lat, strict=True) if x <= best + LATENCY_TIE_S]
        return min(tied, key=lambda v: (v.load, v.index)).index


def meets_slo(req: RouteRequest, p: Prediction | None) -> bool:
    if p is None:
        return False
    if req.slo_ttft_s is not None and p.ttft_s > req.slo_ttft_s:
        return False
    return not (req.slo_e2e_s is not None and p.e2e_s > req.slo_e2e_s)


@dataclass(frozen=True)
class PolicyFactory:
    make: Callable[[], Policy]
    help: str = field(default="")


def _baseline(name: str) -> Callable[[], Policy]:
    """A factory for one of `baselines`' policies. Imported when first made: they build on
    this module's types, so a top-level import would be circular."""

    def make() -> Policy:
        from block.simulator import baselines

        return baselines.BASELINES[name]()

    return make


POLICIES: dict[str, PolicyFactory] = {
    "block": PolicyFactory(lambda: Block(), "lowest predicted e2e latency"),
    "block-ttft": PolicyFactory(lambda: Block(metric="ttft", name="block-ttft"), "lowest TTFT"),
    "block-k2": PolicyFactory(lambda: Block(k=2, name="block-k2"), "block over 2 sampled"),
    "power-of-2": PolicyFactory(lambda: PowerOfK(), "least-loaded of 2 sampled"),
    "llumnix": PolicyFactory(lambda: Llumnix(), "most free KV per running request"),
    "least-requests": PolicyFactory(lambda: LeastRequests(), "fewest running+waiting"),
    "least-kv": PolicyFactory(lambda: LeastKv(), "lowest KV-cache usage"),
    "prefix-affinity": PolicyFactory(lambda: PrefixAffinity(), "longest cached prefix, then load"),
    "round-robin": PolicyFactory(lambda: RoundRobin(), "in turn"),
    "random": PolicyFactory(lambda: Random(), "uniformly at random"),
    # What users would pick instead, each from its project's published rule (baselines.py).
    "llm-d-scorers": PolicyFactory(_baseline("llm-d-scorers"), "llm-d queue/KV/prefix 2/2/3"),
    "llm-d-default": PolicyFactory(_baseline("llm-d-default"), "llm-d affinity + token load"),
    "dynamo-kv": PolicyFactory(_baseline("dynamo-kv"), "Dynamo KV router cost"),
    "aibrix-prefix": PolicyFactory(_baseline("aibrix-prefix"), "AIBrix prefix-cache router"),
    "sglang-cache-aware": PolicyFactory(_baseline("sglang-cache-aware"), "SGLang cache-aware"),
}


def make_policy(name: str) -> Policy:
    if name in POLICIES:
        return POLICIES[name].make()
    if name.startswith("power-of-") and name.removeprefix("power-of-").isdigit():
        k = int(name.removeprefix("power-of-"))
        return PowerOfK(k=k, name=name)
    if name.startswith("block-k") and name.removeprefix("block-k").isdigit():
        return Block(k=int(name.removeprefix("block-k")), name=name)
    raise ConfigError(
        f"unknown policy {name!r}; known: {', '.join(POLICIES)}, power-of-K, block-kK"
    )
