"""`PredictiveAdvisor`: the operator's side of Block's autoscaler (a `ReplicaAdvisor`).

Each resync tick for a BlockCluster with autoscaling on: read `GET /v1/autoscaling/load` from
the cluster's gateway (`block.wire.autoscaling.LoadReport`), rebuild approximate replica states
from the load figures (queued requests sized from the recent mix), and ask the pure
`block.simulator.autoscaling.decide`. Scale-up is answered at once. Scale-down is a drain:

1. pick the victim (least predicted remaining work), `POST /v1/autoscaling/drain` to the
   gateway so it stops routing to it, and keep the replica count;
2. on later ticks, once the victim holds no requests or `drain_timeout_s` has passed, set the
   pod-deletion-cost annotation on its pod (so the ReplicaSet removes that pod) and only then
   answer the lower count, which the operator writes through the scale subresource.

Every decision that changes something is posted as an Event with the predicted p99 at each N.
State per cluster (forecast, drain in progress) lives in the advisor instance, keyed by uid.
Both calls carry the cluster's admin token (`Authorization: Bearer`, from `TokenSource`: the
Secret `NAME-admin`); a 401/403 makes it read the token again and try once more.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import aiohttp

from block.operator.blockcluster import meta, specs
from block.simulator import autoscaling
from block.simulator.latency import LatencyModel
from block.simulator.replica import Replica, ReplicaConfig
from block.simulator.requests import Request
from block.wire.autoscaling import DrainRequest, LoadReport

logger = logging.getLogger(__name__)

DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
LOAD_PATH = "/v1/autoscaling/load"
DRAIN_PATH = "/v1/autoscaling/drain"

EventSink = Callable[[meta.ClusterRef, str, str], None]  # (cluster, reason, message)
Clock = Callable[[], float]


class TokenSource(Protocol):
    """The admin token of a cluster's gateway (`block.operator.credentials.AdminTokens`)."""

    async def get(self, cluster: meta.ClusterRef) -> str | None: ...

    def forget(self, cluster: meta.ClusterRef) -> None: ...


class PodAnnotator(Protocol):
    async def annotate_pod(
        self, namespace: str, name: str, annotations: dict[str, str]
    ) -> None: ...


@dataclass
class ClientPodAnnotator:
    """`PodAnnotator` over the official client (a merge patch of the pod's annotations)."""

    api_client: Any
    timeout_s: float = 30.0

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        from kubernetes import client

        api = client.CoreV1Api(self.api_client)
        body = {"metadata": {"annotations": annotations}}
        await asyncio.to_thread(
            api.patch_namespaced_pod, name, namespace, body, _request_timeout=self.timeout_s
        )


def kopf_events(cluster: meta.ClusterRef, reason: str, message: str) -> None:
    import kopf

    body: dict[str, Any] = {"apiVersion": specs.API_VERSION, "kind": specs.KIND,
            "metadata": {"name": cluster.name, "namespace": cluster.namespace,
                         "uid": cluster.uid}}  # fmt: skip
    kopf.event(
        kopf.Body(cast(kopf.RawBody, body)), type="Normal", reason=reason, message=message[:1000]
    )


@dataclass
class _Drain:
    pod: str
    target: int
    since: float


@dataclass
class _ClusterState:
    scaler: autoscaling.ScalerState = field(default_factory=autoscaling.ScalerState)
    drain: _Drain | None = None
    last: specs.AutoscalingStatus | None = None  # for status.autoscaling


def decision_status(
    decision: autoscaling.Decision, current: int, at: datetime.datetime
) -> specs.AutoscalingStatus:
    """What `status.autoscaling` says of a decision (infinite predictions: absent)."""
    return specs.AutoscalingStatus(
        last_decision_time=at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        current_replicas=current,
        recommended_replicas=decision.recommended,
        target_replicas=decision.replicas,
        forecast_rps=round(decision.forecast_rps, 3),
        decision=decision.reason,
        predicted=[
            specs.PredictedAtSize(replicas=n, p99_seconds=round(p, 4) if math.isfinite(p) else None)
            for n, p in sorted(decision.predicted.items())
        ],
    )


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def default_gateway_url(cluster: meta.ClusterRef) -> str:
    host = f"{meta.child_name(cluster, 'scheduler')}.{cluster.namespace}.svc"
    return f"http://{host}:{meta.SERVICE_PORT}"


def replica_config(scheduling: specs.SchedulingSpec, base: ReplicaConfig) -> ReplicaConfig:
    """The what-if replicas simulate the engine's scheduler as the spec sets it (the engine
    and the sidecars run the same settings); unset fields keep `base` (vLLM's defaults)."""
    changes: dict[str, Any] = {
        k: v
        for k, v in (
            ("max_num_seqs", scheduling.max_num_seqs),
            ("max_num_batched_tokens", scheduling.max_num_batched_tokens),
            ("block_size", scheduling.block_size),
            ("enable_prefix_caching", scheduling.enable_prefix_caching),
        )
        if v is not None
    }
    return dataclasses.replace(base, **changes)


@dataclass
class PredictiveAdvisor:
    session: aiohttp.ClientSession
    pods: PodAnnotator
    events: EventSink = kopf_events
    gateway_url: Callable[[meta.ClusterRef], str] = default_gateway_url
    latency_for: Callable[[specs.BlockClusterSpec], LatencyModel] | None = None
    replica_config: ReplicaConfig = field(default_factory=ReplicaConfig)
    interval_s: float = 60.0  # the operator's resync interval (the control interval)
    lead_s: float = 180.0  # start-up lead time of an engine replica (weights, warm-up)
    drain_timeout_s: float = 300.0
    timeout_s: float = 10.0
    clock: Clock = time.monotonic
    wall_clock: Callable[[], datetime.datetime] = _utc_now  # status timestamps
    tokens: TokenSource | None = None  # None: no credentials sent
    _clusters: dict[str, _ClusterState] = field(default_factory=dict)

    def last_decision(self, cluster: meta.ClusterRef) -> specs.AutoscalingStatus | None:
        state = self._clusters.get(cluster.uid)
        return None if state is None else state.last

    async def advise(
        self,
        cluster: meta.ClusterRef,
        spec: specs.BlockClusterSpec,
        status: specs.BlockClusterStatus,
    ) -> int | None:
        state = self._clusters.setdefault(cluster.uid, _ClusterState())
        base = self.gateway_url(cluster)
        try:
            load = await self._load(cluster, base)
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            logger.warning("autoscaler: no load from %s: %s", base, e)
            return None  # no opinion without data: keep the replicas
        if state.drain is not None:
            return await self._continue_drain(cluster, spec, state, load)
        try:
            latency = self._latency(spec)
        except Exception as e:
            logger.warning("autoscaler: no latency model for %s: %s", spec.model, e)
            return None
        cfg = autoscaling.AutoscalerConfig(
            slo_ttft_s=spec.slo.ttft_seconds or (None if spec.slo.e2e_seconds else 1.0),
            slo_e2e_s=spec.slo.e2e_seconds,
            min_replicas=spec.min_replicas,
            max_replicas=spec.max_replicas,
            lead_s=self.lead_s,
            interval_s=self.interval_s,
            window_s=float(spec.autoscaling.window_seconds),
            stabilisation_s=float(spec.autoscaling.cooldown_seconds),
        )
        now = self.clock()
        config = replica_config(spec.engine.scheduling, self.replica_config)
        live = [r for r in load.replicas if r.ready and not r.draining]
        starting = max(0, spec.replicas - len([r for r in load.replicas if not r.draining]))
        obs = autoscaling.Observation(
            now_s=now,
            # The gateway counts over its own window; the decision expects one control interval.
            arrivals=round(load.arrivals * self.interval_s / load.interval_seconds),
            interarrival_cv=load.interarrival_cv,
            sizes=[tuple(s) for s in load.sizes],  # type: ignore[misc]
            replicas=[self._twin(latency, config, i, r, load, now) for i, r in enumerate(live)],
            starting_ready_s=[now + self.lead_s] * starting,
            new_replica=lambda i: Replica(latency, config, i),
        )
        decision, state.scaler = await asyncio.to_thread(autoscaling.decide, state.scaler, obs, cfg)
        state.last = decision_status(decision, obs.current, self.wall_clock())
        if decision.replicas == obs.current:
            return None
        self.events(cluster, "AutoscalerDecision", decision.explain())
        if decision.replicas > obs.current or not decision.victims:
            return decision.replicas
        victim = min(
            (live[i] for i in decision.victims),
            key=lambda r: (r.predicted_drain_seconds or 0.0, r.num_running + r.num_waiting),
        )
        await self._post_drain(cluster, base, victim.name, True)
        state.drain = _Drain(victim.name, spec.replicas - 1, self.clock())
        state.last = state.last.model_copy(update={"draining": victim.name})
        self.events(cluster, "Draining", f"stopped routing to {victim.name} before removal")
        return None

    async def _continue_drain(
        self,
        cluster: meta.ClusterRef,
        spec: specs.BlockClusterSpec,
        state: _ClusterState,
        load: LoadReport,
    ) -> int | None:
        drain = state.drain
        assert drain is not None
        figures = next((r for r in load.replicas if r.name == drain.pod), None)
        waited = self.clock() - drain.since
        busy = figures is not None and figures.num_running + figures.num_waiting > 0
        if busy and waited < self.drain_timeout_s:
            return None  # keep waiting: in-flight requests finish first
        if figures is not None:
            await self.pods.annotate_pod(
                cluster.namespace, drain.pod, {DELETION_COST_ANNOTATION: "-1000"}
            )
        state.drain = None
        if state.last is not None:
            state.last = state.last.model_copy(update={"draining": None})
        how = "drained" if not busy else f"drain bound of {self.drain_timeout_s:.0f}s passed"
        self.events(cluster, "ScaledDown", f"removing {drain.pod} ({how})")
        return min(drain.target, spec.replicas)

    def _latency(self, spec: specs.BlockClusterSpec) -> LatencyModel:
        if self.latency_for is not None:
            return self.latency_for(spec)
        return LatencyModel.load(spec.engine.gpu, spec.model, spec.engine.tensor_parallel)

    def _twin(
        self,
        latency: LatencyModel,
        config: ReplicaConfig,
        index: int,
        figures: Any,
        load: LoadReport,
        now: float,
    ) -> Replica:
        """An approximate live state: the replica's queued requests, sized from the mix."""
        r = Replica(latency, config, index)
        sizes = load.sizes or [(512, 128)]
        for j in range(figures.num_running + figures.num_waiting):
            prompt, output = sizes[j % len(sizes)]
            r.submit(Request(-1_000_000 * (index + 1) - j, now, prompt, output), now)
        return r

    async def _admin(
        self, cluster: meta.ClusterRef, method: str, url: str, body: Any = None
    ) -> bytes:
        """One call to the gateway's admin API with the cluster's token: the answer's body
        (JSON, for `model_validate_json`: the wire models are strict, JSON arrays are tuples
        only when parsed as JSON)."""
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        for attempt in (1, 2):
            token = await self.tokens.get(cluster) if self.tokens is not None else None
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with self.session.request(
                method, url, json=body, headers=headers, timeout=timeout
            ) as resp:
                if resp.status in (401, 403) and attempt == 1 and self.tokens is not None:
                    self.tokens.forget(cluster)  # replaced Secret: read it again, once
                    continue
                resp.raise_for_status()
                return await resp.read()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _load(self, cluster: meta.ClusterRef, base: str) -> LoadReport:
        return LoadReport.model_validate_json(await self._admin(cluster, "GET", base + LOAD_PATH))

    async def _post_drain(
        self, cluster: meta.ClusterRef, base: str, pod: str, draining: bool
    ) -> None:
        body = DrainRequest(replica=pod, draining=draining).model_dump()
        await self._admin(cluster, "POST", base + DRAIN_PATH, body)


@dataclass
class AdvisorService:
    """The `ReplicaAdvisor` of `block operator run`: a `PredictiveAdvisor` whose HTTP session
    and pod annotator live from kopf's start-up to its clean-up (an aiohttp session must be made
    inside the running event loop, which kopf owns). Before start-up it has no opinion."""

    api_client: Any
    interval_s: float = 60.0
    lead_s: float = 180.0
    drain_timeout_s: float = 300.0
    events: EventSink = kopf_events
    gateway_url: Callable[[meta.ClusterRef], str] = default_gateway_url
    tokens: TokenSource | None = None
    _advisor: PredictiveAdvisor | None = None

    async def startup(self, **_: Any) -> None:
        if self._advisor is None:
            self._advisor = PredictiveAdvisor(
                session=aiohttp.ClientSession(),
                pods=ClientPodAnnotator(self.api_client),
                events=self.events,
                gateway_url=self.gateway_url,
                interval_s=self.interval_s,
                lead_s=self.lead_s,
                drain_timeout_s=self.drain_timeout_s,
                tokens=self.tokens,
            )

    async def cleanup(self, **_: Any) -> None:
        advisor, self._advisor = self._advisor, None
        if advisor is not None:
            await advisor.session.close()

    def register(self, registry: Any) -> None:
        """Open and close the session with the operator (`registry`: a kopf OperatorRegistry)."""
        import kopf

        kopf.on.startup(registry=registry, id="autoscaler-session")(self.startup)
        kopf.on.cleanup(registry=registry, id="autoscaler-session")(self.cleanup)

    async def advise(
        self,
        cluster: meta.ClusterRef,
        spec: specs.BlockClusterSpec,
        status: specs.BlockClusterStatus,
    ) -> int | None:
        if self._advisor is None:
            return None
        return await self._advisor.advise(cluster, spec, status)

    def last_decision(self, cluster: meta.ClusterRef) -> specs.AutoscalingStatus | None:
        return None if self._advisor is None else self._advisor.last_decision(cluster)
