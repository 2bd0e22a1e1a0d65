"""The gateway's side of the autoscaler's API (`block.wire.autoscaling`), read by the operator.

    GET  /v1/autoscaling/load    LoadReport: recent arrivals, request-size mix, replica figures
    POST /v1/autoscaling/drain   DrainRequest -> DrainStatus: stop (or resume) routing to one

* Arrivals are counted in a ring of one-second buckets (count, sum and sum of squares of the
  gaps between arrivals), so recording one costs O(1) and the memory is fixed whatever the
  rate; a report sums the buckets of the last `autoscaling_window_s`. Sizes are up to 512
  `[prompt_tokens, output_tokens]` of requests the sidecars completed last (their
  `/v1/state` `recent_sizes`: every gateway's requests, each counted once, with what the engine
  generated), taken from every replica in turn.
* A replica's figures are what the router last saw; figures older than `FRESH_S`, and those of
  draining replicas (no request asks their predictor any more), are refreshed from the
  sidecar's `GET /v1/state` first, whose `inflight` counts every gateway's requests.
* A drain is a deadline on the `Replica` (`drain_until`): routing skips it until then, so a
  drain the operator forgot ends by itself after `drain_max_s`, and one on a replica that
  discovery drops disappears with it. Draining the last replica that is not draining is
  refused (409): the gateway would have nowhere to send anything.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from block.errors import BlockError, InvalidRequest, NotFound
from block.scheduler.replicas import NEVER, Replica, ReplicaSet
from block.scheduler.settings import SchedulerSettings
from block.wire.autoscaling import DrainRequest, DrainStatus, LoadReport, ReplicaLoad
from block.wire.openai import validation_message
from block.wire.predict import StateResponse

logger = logging.getLogger(__name__)

LOAD_PATH = "/v1/autoscaling/load"
DRAIN_PATH = "/v1/autoscaling/drain"
MAX_SIZES = 512  # the wire model's bound
BUCKET_S = 1.0
# Figures younger than this are reported as they are; older ones are asked for again (a
# replica without traffic keeps its last figures forever otherwise).
FRESH_S = 1.0
STATE_TIMEOUT_S = 1.0
MAX_BODY_BYTES = 4096
Clock = Callable[[], float]


class Conflict(BlockError):
    status = 409
    title = "Conflict"


class ArrivalWindow:
    """Arrival count and the coefficient of variation of their gaps over a rolling window."""

    def __init__(self, window_s: float, started: float = NEVER, bucket_s: float = BUCKET_S) -> None:
        self.window_s = window_s
        self.bucket_s = bucket_s
        self.started = started  # reports cover no more than the time since then
        n = max(1, math.ceil(window_s / bucket_s))
        self._epoch = [-1] * n  # bucket index held in each slot
        self._count = [0] * n
        self._gaps = [0] * n  # gaps recorded (the first arrival of all has none)
        self._sum = [0.0] * n
        self._sumsq = [0.0] * n
        self._last: float | None = None

    def arrive(self, t: float) -> None:
        idx = math.floor(t / self.bucket_s)
        slot = idx % len(self._epoch)
        if self._epoch[slot] != idx:
            self._epoch[slot] = idx
            self._count[slot] = self._gaps[slot] = 0
            self._sum[slot] = self._sumsq[slot] = 0.0
        self._count[slot] += 1
        last, self._last = self._last, t
        if last is not None and t - last <= self.window_s:
            gap = max(0.0, t - last)  # concurrent handlers may record slightly out of order
            self._gaps[slot] += 1
            self._sum[slot] += gap
            self._sumsq[slot] += gap * gap

    def report(self, now: float) -> tuple[float, int, float]:
        """(seconds covered, arrivals in them, gap CV; 1.0, Poisson's, with under 2 gaps)."""
        now_idx = math.floor(now / self.bucket_s)
        n = len(self._epoch)
        oldest = now_idx - n + 1
        count = gaps = 0
        total = sumsq = 0.0
        for slot in range(n):
            if oldest <= self._epoch[slot] <= now_idx:
                count += self._count[slot]
                gaps += self._gaps[slot]
                total += self._sum[slot]
                sumsq += self._sumsq[slot]
        # The current bucket is partly over; a young gateway has seen less than a window.
        covered = min(now - oldest * self.bucket_s, now - self.started)
        cv = 1.0
        if gaps >= 2 and total > 0:
            mean = total / gaps
            cv = math.sqrt(max(0.0, sumsq / gaps - mean * mean)) / mean
        return max(covered, 1e-3), count, cv


class HasReplicas(Protocol):
    """What the handlers need of the running gateway (`service.Gateway` is one)."""

    @property
    def replicas(self) -> ReplicaSet: ...
    @property
    def session(self) -> aiohttp.ClientSession: ...


@dataclass(frozen=True)
class AutoscalingMetrics:
    drains: Counter

    @classmethod
    def create(
        cls, registry: CollectorRegistry, replicas: Callable[[], Iterable[Replica]], now: Clock
    ) -> AutoscalingMetrics:
        draining = Gauge(
            "block_scheduler_draining_replicas",
            "Replicas the autoscaler asked this gateway to stop routing to (drain not over).",
            registry=registry,
        )

        def count() -> float:
            try:
                t = now()
            except RuntimeError:  # collected outside the event loop: nothing routes there
                return 0.0
            return float(sum(r.draining(t) for r in replicas()))

        draining.set_function(count)
        return cls(
            drains=Counter(
                "block_scheduler_drains_total",
                "Drain requests from the autoscaler, by action (start, undo).",
                ["action"],
                registry=registry,
            ),
        )


class Autoscaling:
    """The traffic record and the two handlers; one per app."""

    def __init__(
        self,
        settings: SchedulerSettings,
        registry: CollectorRegistry,
        gateway: Callable[[], HasReplicas | None],
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._gateway = gateway
        self._clock = clock
        self.window = ArrivalWindow(settings.autoscaling_window_s)
        self.metrics = AutoscalingMetrics.create(registry, self._replicas, clock)

    def _replicas(self) -> list[Replica]:
        gw = self._gateway()
        return [] if gw is None else gw.replicas.all()

    # The request path: one call per request, no awaits, no allocation.

    def arrived(self) -> None:
        self.window.arrive(self._clock())

    # The handlers.

    async def load(self, request: web.Request) -> web.Response:
        gw = self._running()
        replicas = gw.replicas.all()
        # Every sidecar is asked: its figures, and the sizes of the requests it completed
        # (whichever gateway sent them).
        states = await asyncio.gather(*(_ask_state(gw.session, r, self._clock) for r in replicas))
        sizes = merge_sizes([s.recent_sizes for s in states if s is not None], MAX_SIZES)
        now = self._clock()
        interval, arrivals, cv = self.window.report(now)
        report = LoadReport(
            interval_seconds=interval,
            arrivals=arrivals,
            interarrival_cv=cv,
            sizes=sizes,
            replicas=[_replica_load(r, now) for r in replicas],
        )
        return web.json_response(text=report.model_dump_json())

    async def drain(self, request: web.Request) -> web.Response:
        raw = await request.content.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            raise InvalidRequest(f"the body is over {MAX_BODY_BYTES} bytes")
        try:
            body = DrainRequest.model_validate_json(raw)
        except ValidationError as e:
            raise InvalidRequest(f"not a DrainRequest: {validation_message(e)}") from e
        gw = self._running()
        now = self._clock()
        targets = [r for r in gw.replicas.all() if r.name == body.replica]
        if not targets:
            known = ", ".join(r.name for r in gw.replicas.all()[:20]) or "none"
            raise NotFound(f"no replica named {body.replica!r} (known: {known})")
        if body.draining:
            others = [r for r in gw.replicas.all() if r.name != body.replica]
            if not any(not r.draining(now) for r in others):
                raise Conflict(
                    f"{body.replica} is the last replica not draining; draining it would leave "
                    "nothing to route to"
                )
            for r in targets:
                if not r.draining(now):
                    r.drain_until = now + self._settings.drain_max_s
            self.metrics.drains.labels("start").inc()
            logger.info("draining %s (routing resumes in %.0f s unless removed)",
                        body.replica, self._settings.drain_max_s)  # fmt: skip
        else:
            for r in targets:
                r.drain_until = NEVER
            self.metrics.drains.labels("undo").inc()
            logger.info("drain of %s undone", body.replica)
        await self._refresh(gw.session, targets)
        loads = [_replica_load(r, self._clock()) for r in targets]
        status = DrainStatus(
            replica=body.replica,
            draining=body.draining,
            num_running=sum(x.num_running for x in loads),
            num_waiting=sum(x.num_waiting for x in loads),
        )
        return web.json_response(text=status.model_dump_json())

    def _running(self) -> HasReplicas:
        gw = self._gateway()
        if gw is None:
            raise web.HTTPServiceUnavailable(text="the gateway is starting")
        return gw

    async def _refresh(self, session: aiohttp.ClientSession, replicas: list[Replica]) -> None:
        now = self._clock()
        stale = [
            r
            for r in replicas
            if r.draining(now) or r.figures is None or now - r.figures_at > FRESH_S
        ]
        if stale:
            await asyncio.gather(*(_ask_state(session, r, self._clock) for r in stale))


async def _ask_state(
    session: aiohttp.ClientSession, r: Replica, clock: Clock
) -> StateResponse | None:
    """Refresh `r`'s figures from its sidecar; keep the old ones when it does not answer."""
    sent = clock()
    try:
        async with session.get(
            r.url + "/v1/state", timeout=aiohttp.ClientTimeout(total=STATE_TIMEOUT_S)
        ) as resp:
            if resp.status != 200:
                return None  # a plain OpenAI server: its figures stay what routing saw
            state = StateResponse.model_validate_json(await resp.read())
    except (aiohttp.ClientError, TimeoutError, ValidationError) as e:
        logger.debug("no state from %s: %s", r.name, e)
        return None
    r.note_figures(state.load, sent, state.model)
    r.sidecar_inflight = (state.inflight, sent)
    return state


def merge_sizes(per_replica: list[list[tuple[int, int]]], limit: int) -> list[tuple[int, int]]:
    """The replicas' recent sizes (each oldest first) taken newest first in turn, so every
    replica is represented when there are more than `limit`."""
    out: list[tuple[int, int]] = []
    depth = max((len(sizes) for sizes in per_replica), default=0)
    for back in range(1, depth + 1):
        for sizes in per_replica:
            if back <= len(sizes):
                out.append(sizes[-back])
                if len(out) == limit:
                    return out
    return out


def _replica_load(r: Replica, now: float) -> ReplicaLoad:
    f = r.figures
    running, waiting = (f.num_running, f.num_waiting) if f is not None else (0, 0)
    # The twin's queue, the sidecar's proxied requests and this gateway's own dispatches each
    # can lag the others; a replica is only idle when all three say so.
    busy = max(running + waiting, len(r.active))
    inflight, at = r.sidecar_inflight
    if at >= r.figures_at:
        busy = max(busy, inflight)
    return ReplicaLoad(
        name=r.name[:253],
        num_running=busy - waiting,
        num_waiting=waiting,
        kv_used_blocks=f.kv_blocks_used if f is not None else 0,
        kv_total_blocks=f.kv_blocks_total if f is not None else 0,
        waiting_prefill_tokens=f.waiting_prefill_tokens if f is not None else 0,
        predicted_drain_seconds=None,  # the predictors do not answer time-until-idle yet
        ready=r.ready and r.probe_ok,
        draining=r.draining(now),
    )


def _loop_time() -> float:
    """The event loop's clock, the one `Replica` deadlines and figures are on."""
    return asyncio.get_running_loop().time()


AUTOSCALING = web.AppKey("autoscaling", Autoscaling)


def install(
    app: web.Application,
    settings: SchedulerSettings,
    registry: CollectorRegistry,
    gateway: Callable[[], HasReplicas | None],
) -> Autoscaling:
    """Add the two routes and the traffic record to the gateway app."""
    autoscaling = Autoscaling(settings, registry, gateway, _loop_time)

    async def started(_: web.Application) -> None:
        autoscaling.window.started = _loop_time()

    app.on_startup.append(started)
    app[AUTOSCALING] = autoscaling
    app.router.add_get(LOAD_PATH, autoscaling.load)
    app.router.add_post(DRAIN_PATH, autoscaling.drain)
    return autoscaling
