"""Choose a replica for one request: candidates, fan-out, views, policy, admission, dispatch.

The policy itself is pure (`block.simulator.policies`, shared with the offline cluster model);
this module builds its inputs from what the gateway knows:

* the candidates the policy asks for, among replicas that are ready, healthy and not already
  tried by this request;
* predictions and load figures from a fan-out to their predictors (prediction policies, and
  load policies unless `load_figures="cached"`), with a deadline;
* requests this gateway dispatched that the figures cannot show yet (`Replica.unseen`): they
  count as load, and each adds the candidate's own predicted prefill time to its predicted
  latencies, so a burst decided on the same figures spreads out instead of herding.

With no prediction in time, the load-based fallback policy decides over every live replica.
Admission: 429 when every replica asked is predicted to miss the request's SLO, or every
replica's queue is at its limit (both configurable).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from block.errors import ConfigError, Overloaded, Unavailable
from block.scheduler.metrics import SchedulerMetrics
from block.scheduler.predicting import Answer, PredictorClient
from block.scheduler.replicas import NEVER, Replica, ReplicaSet, Ticket
from block.scheduler.settings import SchedulerSettings
from block.simulator.policies import (
    Policy,
    PrefixAffinity,
    ReplicaView,
    RouteRequest,
    make_policy,
    meets_slo,
)
from block.simulator.prediction import Prediction
from block.wire.predict import LoadFigures

# Smallest latency one unseen request adds to a prediction, seconds (a prefill step).
MIN_UNSEEN_PENALTY_S = 0.002


@dataclass(slots=True)  # not frozen: per-request record, built on the hot path
class Decision:
    replica: Replica
    ticket: Ticket  # release when the proxied request ends
    policy: str  # the policy that chose (the fallback's name when it did)
    fallback: str | None  # why the fallback decided, if it did
    prediction: Prediction | None  # of the chosen replica, unseen requests included
    asked: int
    answered: int


def resolve_policy(name: str, k: int) -> Policy:
    """A policy by name; `power-of-k` and `block-k` (the operator's spellings) take `k`."""
    if name == "power-of-k":
        name = f"power-of-{k}"
    elif name == "block-k":
        name = f"block-k{k}"
    return make_policy(name)


def check_policies(settings: SchedulerSettings) -> tuple[Policy, Policy]:
    """The policy and the fallback the settings name; `ConfigError` if either is unusable."""
    policy = resolve_policy(settings.policy, settings.k)
    if policy.prefix_index is not None:
        # The other routers' rules need a router-side prefix index and request ledger
        # (block.simulator.router_memory) that only the offline cluster model keeps so far.
        raise ConfigError(
            f"policy {settings.policy!r} is a baseline of the offline experiments; the gateway "
            "does not keep its router-side prefix index yet"
        )
    fallback = make_policy(settings.fallback_policy)
    if fallback.needs_prediction:
        raise ConfigError(
            f"fallback policy {settings.fallback_policy!r} needs predictions; "
            "pick a load-based one (least-requests, least-kv, llumnix, ...)"
        )
    return policy, fallback


class Router:
    def __init__(
        self,
        settings: SchedulerSettings,
        replicas: ReplicaSet,
        predictor: PredictorClient,
        metrics: SchedulerMetrics,
        rng: random.Random,
    ) -> None:
        self.policy, self.fallback = check_policies(settings)
        self._settings = settings
        self._replicas = replicas
        self._predictor = predictor
        self._metrics = metrics
        self._rng = rng
        # Load-free views by candidate indices: policies that read no figures (round-robin,
        # random) get the same views every time, so they are built once.
        self._blank_views: dict[tuple[int, ...], tuple[ReplicaView, ...]] = {}
        # Which replica holds the prompt's prefix is only known by asking, per request.
        self.reads_prefix = self.policy.name == PrefixAffinity.name
        self.fans_out = (
            self.policy.needs_prediction
            or self.reads_prefix
            or (self.policy.needs_load and settings.load_figures == "request")
        )

    @property
    def uses_prefix_hashes(self) -> bool:
        """The policy reads what block hashes add (predicted hits, cached prefix lengths)."""
        return self.policy.needs_prediction or self.reads_prefix

    async def decide(
        self,
        route: RouteRequest,
        exclude: set[str],
        block_hashes: Sequence[int] | None = None,
    ) -> Decision:
        """Pick a replica and dispatch to it (the returned ticket counts it in flight)."""
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        live = self._replicas.routable(loop.time(), exclude)
        if not live:
            raise Unavailable(
                "no replica is ready to serve"
                + (f" ({len(exclude)} tried and failed)" if exclude else "")
            )
        policy = self.policy
        cand = list(policy.candidates(len(live), self._rng))
        answers: Sequence[Answer | None] = [None] * len(cand)
        answered = 0
        if self.fans_out:
            answers = await self._predictor.ask(
                [live[i] for i in cand], route.prompt_tokens, route.output_tokens, block_hashes
            )
            answered = sum(a is not None for a in answers)
        views: Sequence[ReplicaView]
        if policy.needs_load or policy.needs_prediction:
            views = [self._view(live[i], i, a) for i, a in zip(cand, answers, strict=True)]
        else:  # round-robin, random: figures would go unread
            views = self._blank(cand)
        fallback: str | None = None
        if self.fans_out and answered == 0:
            fallback = "no_answer"
            self._metrics.child(self._metrics.fallbacks, policy.name, fallback).inc()
            if policy.needs_prediction:
                # Decide over every live replica, not just the sampled ones.
                policy = self.fallback
                views = [self._view(r, i, None) for i, r in enumerate(live)]
        self._admit(route, views, all_answered=answered == len(cand))
        index = policy.choose(route, views, self._rng)
        chosen = live[index]
        ticket = self._replicas.dispatch(chosen, loop.time())
        prediction = None
        if answered:  # views carry predictions only from answers
            prediction = next((v.prediction for v in views if v.index == index), None)
        # Counted once the request is on its way: the loop runs this when the caller next
        # waits (on the replica's answer), so the metrics are off the request's path.
        loop.call_soon(self._count_decision, policy.name, chosen.name, time.perf_counter() - t0)
        return Decision(chosen, ticket, policy.name, fallback, prediction, len(cand), answered)

    def _count_decision(self, policy: str, replica: str, seconds: float) -> None:
        self._metrics.child(self._metrics.decisions, policy, replica).inc()
        self._metrics.child(self._metrics.decision_seconds, self.policy.name).observe(seconds)

    def _blank(self, cand: Sequence[int]) -> tuple[ReplicaView, ...]:
        key = tuple(cand)
        views = self._blank_views.get(key)
        if views is None:
            if len(self._blank_views) >= 64:  # replica sets change; keep the cache small
                self._blank_views.clear()
            views = self._blank_views[key] = tuple(ReplicaView(i, 0, 0, 0, 1) for i in cand)
        return views

    def _view(self, r: Replica, index: int, answer: Answer | None) -> ReplicaView:
        vis = self._settings.visibility_s
        prediction: Prediction | None = None
        figures: LoadFigures | None
        if answer is not None:
            figures, since, prediction = answer.figures, answer.sent_at - vis, answer.prediction
        else:
            figures = r.figures
            since = r.figures_at - vis if figures is not None else NEVER
        unseen = r.unseen(since)
        if prediction is not None and unseen:
            prediction = with_unseen(prediction, unseen)
        hit = 0 if answer is None else answer.prefix_hit_tokens
        if figures is None:
            return ReplicaView(
                index, 0, 0, 0, 1, inflight=unseen, prediction=prediction, prefix_hit_tokens=hit
            )
        return ReplicaView(
            index=index,
            num_running=figures.num_running,
            num_waiting=figures.num_waiting,
            kv_used_blocks=figures.kv_blocks_used,
            kv_total_blocks=figures.kv_blocks_total,
            waiting_prefill_tokens=figures.waiting_prefill_tokens,
            block_size=figures.block_size,
            inflight=unseen,
            prediction=prediction,
            prefix_hit_tokens=hit,
        )

    def _admit(self, route: RouteRequest, views: Sequence[ReplicaView], all_answered: bool) -> None:
        s = self._settings
        if s.reject_unmeetable and all_answered and views and _has_slo(route):
            slack = RouteRequest(
                route.prompt_tokens,
                route.output_tokens,
                None if route.slo_ttft_s is None else route.slo_ttft_s * s.slo_slack,
                None if route.slo_e2e_s is None else route.slo_e2e_s * s.slo_slack,
            )
            if not any(meets_slo(slack, v.prediction) for v in views):
                self._metrics.child(self._metrics.rejected, "slo").inc()
                best = min(views, key=lambda v: _ttft(v.prediction))
                raise Overloaded(
                    f"every replica asked ({len(views)}) is predicted to miss this request's "
                    f"SLO (best predicted TTFT {_ttft(best.prediction):.3f} s, "
                    f"e2e {_e2e(best.prediction):.3f} s); retry later",
                    retry_after_s=_retry_after(best.prediction),
                )
        limit = s.max_waiting_per_replica
        if limit and views and all(v.num_waiting + v.inflight >= limit for v in views):
            self._metrics.child(self._metrics.rejected, "queue").inc()
            raise Overloaded(
                f"every replica has {limit} or more requests waiting; retry later",
                retry_after_s=1.0,
            )


def with_unseen(p: Prediction, unseen: int) -> Prediction:
    """The prediction with `unseen` more requests ahead, each costing about one prefill."""
    extra = unseen * max(p.ttft_s - p.queue_s, MIN_UNSEEN_PENALTY_S)
    return Prediction(p.queue_s + extra, p.ttft_s + extra, p.e2e_s + extra, p.added_delay_s)


def _has_slo(route: RouteRequest) -> bool:
    return route.slo_ttft_s is not None or route.slo_e2e_s is not None


def _ttft(p: Prediction | None) -> float:
    return math.inf if p is None else p.ttft_s


def _e2e(p: Prediction | None) -> float:
    return math.inf if p is None else p.e2e_s


def _retry_after(p: Prediction | None) -> float:
    """About as long as the best replica's predicted queue, within 1..60 s."""
    if p is None or not math.isfinite(p.queue_s):
        return 1.0
    return min(60.0, max(1.0, math.ceil(p.queue_s)))
