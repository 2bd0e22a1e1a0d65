"""A cluster whose replica count changes while it serves: the offline twin of autoscaling.

Replicas start (ready after a lead time), serve, drain (no new requests; removed once idle, or
after `drain_timeout_s` with what is left aborted) and are removed. A `Controller` is asked
every `interval_s` for a target count; requests go to the least-loaded ready replica. Replica
time is counted from the start (the GPU is held while weights load) to the removal.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from block.simulator import autoscaling, cluster
from block.simulator.latency import LatencyModel
from block.simulator.prediction import predict_one_more
from block.simulator.replica import Replica, ReplicaConfig
from block.simulator.requests import Request, RequestRecord


@dataclass(slots=True)
class Slot:
    replica: Replica
    started_s: float
    ready_s: float
    draining_since_s: float | None = None
    removed_s: float | None = None

    def routable(self, now: float) -> bool:
        return self.removed_s is None and self.draining_since_s is None and self.ready_s <= now


@dataclass(frozen=True, slots=True)
class Action:
    target: int
    victims: tuple[int, ...] = ()  # slot indices to drain first (others: least work)
    lead_s: float | None = None  # override of the cluster's lead time (pre-started pools)
    note: str = ""


@dataclass
class View:
    """What a controller sees each interval (read-only by convention)."""

    now_s: float
    interval_s: float
    slots: list[Slot]
    recent: deque[Request]  # recent arrivals, oldest first
    arrivals: int  # in the last interval
    interarrival_cv: float

    @property
    def live(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s.routable(self.now_s)]

    @property
    def starting(self) -> list[int]:
        return [
            i
            for i, s in enumerate(self.slots)
            if s.removed_s is None and s.draining_since_s is None and s.ready_s > self.now_s
        ]


class Controller(Protocol):
    name: str

    def control(self, view: View) -> Action: ...


@dataclass
class ElasticResult:
    records: list[RequestRecord]
    aborted: int
    replica_s: float
    timeline: list[tuple[float, int, int]]  # (time, live, starting) after each control step
    notes: list[tuple[float, str]] = field(default_factory=list)


def _cv(times: Sequence[float]) -> float:
    if len(times) < 3:
        return 1.0
    gaps = np.diff(np.asarray(times))
    mean = float(gaps.mean())
    return float(gaps.std() / mean) if mean > 0 else 1.0


def simulate_elastic(
    latency: LatencyModel,
    config: ReplicaConfig,
    requests: Sequence[Request],
    controller: Controller,
    initial: int,
    lead_s: float,
    interval_s: float = 5.0,
    drain_timeout_s: float = 60.0,
    recent_size: int = 512,
) -> ElasticResult:
    slots = [Slot(Replica(latency, config, i), 0.0, 0.0) for i in range(initial)]
    recent: deque[Request] = deque(maxlen=recent_size)
    window: list[float] = []
    timeline: list[tuple[float, int, int]] = []
    notes: list[tuple[float, str]] = []
    aborted = 0
    t_next = interval_s

    def tick(now: float) -> None:
        nonlocal aborted
        for s in slots:
            if s.removed_s is None:
                s.replica.advance_to(now)
        aborted += _finish_drains(slots, now, drain_timeout_s)
        view = View(now, interval_s, slots, recent, len(window), _cv(window))
        action = controller.control(view)
        if action.note:
            notes.append((now, action.note))
        _apply(slots, action, now, lead_s if action.lead_s is None else action.lead_s, latency,
               config)  # fmt: skip
        window.clear()
        timeline.append((now, len(view.live), len(view.starting)))

    for req in requests:
        while req.arrival_s >= t_next:
            tick(t_next)
            t_next += interval_s
        now = req.arrival_s
        best, best_load = -1, (1 << 62, 0)
        for i, s in enumerate(slots):
            if not s.routable(now):
                continue
            r = s.replica
            r.advance_to(now)
            load = autoscaling.routing_load(r)
            if load < best_load:
                best, best_load = i, load
        if best < 0:  # nothing routable (every replica starting): the first ready takes it
            live = [i for i, s in enumerate(slots) if s.removed_s is None]
            best = min(live, key=lambda i: slots[i].ready_s)
        slot = slots[best]
        slot.replica.submit(req, max(now, slot.ready_s))
        recent.append(req)
        window.append(now)
    # Drain what is queued, keeping the control loop going so drains and scale-down happen.
    while any(s.removed_s is None and not s.replica.idle for s in slots):
        tick(t_next)
        t_next += interval_s
    end = t_next
    for s in slots:
        if s.removed_s is None:
            s.removed_s = end
    replica_s = sum(max(0.0, (s.removed_s or end) - s.started_s) for s in slots)
    records = cluster.collect([s.replica for s in slots], requests)
    return ElasticResult(records, aborted, replica_s, timeline, notes)


def _finish_drains(slots: list[Slot], now: float, timeout_s: float) -> int:
    aborted = 0
    for s in slots:
        if s.removed_s is not None or s.draining_since_s is None:
            continue
        r = s.replica
        if r.idle:
            s.removed_s = now
        elif now - s.draining_since_s >= timeout_s:
            held = [rid for rid in r.running] + [req.rid for req, _ in r.waiting]
            for rid in held:
                r.abort(rid, now)
            aborted += len(held)
            s.removed_s = now
    return aborted


def _apply(
    slots: list[Slot],
    action: Action,
    now: float,
    lead_s: float,
    latency: LatencyModel,
    config: ReplicaConfig,
) -> None:
    active = [i for i, s in enumerate(slots) if s.removed_s is None and s.draining_since_s is None]
    current = len(active)
    if action.target > current:
        for _ in range(action.target - current):
            slots.append(Slot(Replica(latency, config, len(slots)), now, now + lead_s))
        return
    remove = current - action.target
    starting = [i for i in active if slots[i].ready_s > now]
    for i in sorted(starting, key=lambda i: -slots[i].ready_s)[:remove]:
        slots[i].removed_s = now  # cancel a start: nothing to drain
        remove -= 1
    victims = [i for i in action.victims if i in active and slots[i].ready_s <= now]
    if len(victims) < remove:
        others = [i for i in active if slots[i].ready_s <= now and i not in victims]
        others.sort(key=lambda i: autoscaling.remaining_work_s(slots[i].replica, now))
        victims += others
    for i in victims[:remove]:
        slots[i].draining_since_s = now


# ---------------------------------------------------------------------------- controllers


@dataclass
class Fixed:
    """Fixed over-provisioning: `replicas` all the time."""

    replicas: int
    name: str = "fixed"

    def control(self, view: View) -> Action:
        return Action(self.replicas)


@dataclass
class Threshold:
    """Block's original trigger: scale-up only, from pre-started instances (no lead time), one
    at a time, when the best predicted e2e of a typical request passes `threshold_e2e_s`."""

    threshold_e2e_s: float
    max_replicas: int
    name: str = "threshold"

    def control(self, view: View) -> Action:
        live = view.live
        current = len(live) + len(view.starting)
        if not view.recent or not live or current >= self.max_replicas:
            return Action(current)
        prompt = int(np.median([r.prompt_tokens for r in view.recent]))
        output = int(np.median([r.output_tokens for r in view.recent]))
        best = min(
            predict_one_more(view.slots[i].replica, prompt, output, view.now_s).e2e_s for i in live
        )
        if best > self.threshold_e2e_s:
            return Action(current + 1, lead_s=0.0, note=f"best predicted e2e {best:.2f}s")
        return Action(current)


@dataclass
class Reactive:
    """KEDA/HPA-style: desired = ceil(waiting requests / target per replica), 10 % tolerance,
    scale-up at once, scale-down to the highest desired count of the stabilisation window."""

    min_replicas: int
    max_replicas: int
    target_waiting: float = 5.0
    stabilisation_s: float = 60.0
    tolerance: float = 0.1
    name: str = "reactive"
    _history: deque[tuple[float, int]] = field(default_factory=deque)

    def control(self, view: View) -> Action:
        live = view.live
        current = len(live) + len(view.starting)
        waiting = sum(view.slots[i].replica.num_waiting for i in live)
        ratio = waiting / (self.target_waiting * max(1, len(live)))
        desired = (
            current
            if abs(ratio - 1.0) <= self.tolerance
            else math.ceil(waiting / self.target_waiting)
        )
        desired = max(self.min_replicas, min(self.max_replicas, desired))
        hist = self._history
        if not hist:
            hist.append((view.now_s, current))  # no scale-down before a full window
        hist.append((view.now_s, desired))
        while hist and hist[0][0] <= view.now_s - self.stabilisation_s:
            hist.popleft()
        if desired >= current:
            return Action(desired)
        return Action(max(d for _, d in hist))


@dataclass
class Predictive:
    """Block's autoscaler (`autoscaling.decide`) over the simulated cluster's live replicas."""

    config: autoscaling.AutoscalerConfig
    name: str = "block"
    _state: autoscaling.ScalerState = field(default_factory=autoscaling.ScalerState)

    def control(self, view: View) -> Action:
        live = view.live
        obs = autoscaling.Observation(
            now_s=view.now_s,
            arrivals=view.arrivals,
            interarrival_cv=view.interarrival_cv,
            sizes=[(r.prompt_tokens, r.output_tokens) for r in view.recent],
            replicas=[view.slots[i].replica for i in live],
            starting_ready_s=[view.slots[i].ready_s for i in view.starting],
        )
        decision, self._state = autoscaling.decide(self._state, obs, self.config)
        victims = tuple(live[v] for v in decision.victims)
        note = decision.explain() if decision.replicas != obs.current else ""
        return Action(decision.replicas, victims, note=note)
