"""What one gateway knows about each replica: readiness, health, last load figures, in-flight.

Everything here is mutated on the event loop only (discovery threads hand over with
`call_soon_threadsafe`), so there are no locks. Times are the event loop's monotonic clock.

In-flight accounting: each dispatch gets a `Ticket` (released when the proxied request ends).
A replica's figures (from a predictor answer) were taken at some moment; requests this gateway
dispatched shortly before or after it may not be in them yet. `unseen(since)` counts the
dispatches still active since then, so a burst of decisions made on the same figures does not
pile onto one replica (herding). Only active dispatches are kept (by ticket, in dispatch order),
so the bookkeeping is as large as the replica's in-flight count and a release is O(1): no
history to prune on the request path.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from block.wire.predict import LoadFigures

NEVER = -math.inf


def address_of(url: str) -> str:
    """A replica URL's `ip:port`, the form endpoints take in the protocol."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{host}:{port}"


def redact(url: str) -> str:
    """`url` without the user and password it may carry (for views and logs)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A replica as discovery reports it."""

    name: str  # pod name, or host:port for a static URL
    url: str  # base URL of the replica's predictor sidecar, no trailing slash
    ready: bool = True


class Ticket:
    """One dispatched request; `release()` when the proxied request is over (idempotent)."""

    __slots__ = ("id", "released", "replica")

    def __init__(self, replica: Replica, ticket_id: int) -> None:
        self.id = ticket_id
        self.replica = replica
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.replica.active.pop(self.id, None)


class Replica:
    """One replica as this gateway sees it."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.name = endpoint.name
        self.url = endpoint.url.rstrip("/")
        self.address = address_of(self.url)  # ip:port, as the endpoint-picker protocol names it
        self.ready = endpoint.ready  # from discovery
        self.probe_ok = True  # from the active /readyz probe; optimistic until it says no
        self.failures = 0  # proxy failures in a row
        self.backoff_until = NEVER
        self.predictor_failures = 0  # predictor failures or deadline misses in a row
        self.predictor_skip_until = NEVER
        self.figures: LoadFigures | None = None
        self.figures_at = NEVER  # when the request that produced `figures` was sent
        self.model: str | None = None  # as the predictor reports it
        self.dispatched = 0
        # Active dispatches: ticket id -> loop time of the dispatch. Insertion order is dispatch
        # order and the loop clock never goes back, so the times only grow along the dict.
        self.active: dict[int, float] = {}
        # Not routed to before this time: the autoscaler drains it (`autoscaling_api`).
        self.drain_until = NEVER
        # The sidecar's own in-flight count (every gateway's requests) and when it was asked.
        self.sidecar_inflight: tuple[int, float] = (0, NEVER)

    def routable(self, now: float) -> bool:
        return (
            self.ready and self.probe_ok and now >= self.backoff_until and now >= self.drain_until
        )

    def draining(self, now: float) -> bool:
        return now < self.drain_until

    def dispatch(self, now: float, ticket_id: int) -> Ticket:
        self.dispatched += 1
        self.active[ticket_id] = now
        return Ticket(self, ticket_id)

    def unseen(self, since: float) -> int:
        """Active dispatches made at or after `since` (all active ones when `since` is -inf)."""
        if since == NEVER:
            return len(self.active)
        n = 0
        for t in reversed(self.active.values()):  # newest first
            if t < since:
                break
            n += 1
        return n

    def note_figures(self, figures: LoadFigures, at: float, model: str | None = None) -> None:
        if at >= self.figures_at:
            self.figures, self.figures_at = figures, at
            if model:
                self.model = model

    def note_failure(self, now: float, base_s: float, max_s: float) -> float:
        """Back off from a replica whose proxying failed; returns the backoff, seconds."""
        self.failures += 1
        backoff = min(max_s, base_s * 2.0 ** (self.failures - 1))
        self.backoff_until = now + backoff
        return backoff

    def note_success(self) -> None:
        self.failures = 0

    def note_predictor_failure(self, now: float, limit: int, cooldown_s: float) -> None:
        self.predictor_failures += 1
        if self.predictor_failures >= limit:
            self.predictor_skip_until = now + cooldown_s
            self.predictor_failures = 0

    def note_predictor_success(self) -> None:
        self.predictor_failures = 0

    def describe(self, now: float) -> dict[str, object]:
        """The JSON shape of /v1/replicas."""
        return {
            "name": self.name,
            "url": redact(self.url),
            "ready": self.ready,
            "probe_ok": self.probe_ok,
            "routable": self.routable(now),
            "failures": self.failures,
            "backoff_s": max(0.0, self.backoff_until - now),
            "predictor_skipped_s": max(0.0, self.predictor_skip_until - now),
            "inflight": len(self.active),
            "draining_s": max(0.0, self.drain_until - now),
            "dispatched": self.dispatched,
            "model": self.model,
            "load": self.figures.model_dump() if self.figures else None,
            "load_age_s": None if self.figures is None else now - self.figures_at,
        }


class ReplicaSet:
    """The replicas discovery reports, keyed by URL, in a stable order (by name)."""

    def __init__(self) -> None:
        self._by_url: dict[str, Replica] = {}
        self._ordered: list[Replica] = []
        self._ticket_ids = itertools.count()
        self.generation = 0  # bumps on every change, for observers

    def update(self, endpoints: Iterable[Endpoint]) -> None:
        """Replace the set: new URLs are added, gone ones dropped, readiness refreshed.

        A dropped replica's in-flight requests finish normally (their tickets hold it).
        """
        fresh: dict[str, Replica] = {}
        for ep in endpoints:
            url = ep.url.rstrip("/")
            r = self._by_url.get(url) or fresh.get(url)
            if r is None:
                r = Replica(ep)
            else:
                r.ready = ep.ready or (url in fresh and r.ready)
                r.name = ep.name
            fresh[url] = r
        self._by_url = fresh
        self._ordered = sorted(fresh.values(), key=lambda r: (r.name, r.url))
        self.generation += 1

    def all(self) -> list[Replica]:
        return self._ordered

    def routable(self, now: float, exclude: set[str]) -> list[Replica]:
        """Replicas to route to now, minus `exclude` (URLs already tried by this request).

        When every ready replica is backing off, the one whose backoff ends first is
        offered anyway: a replica that has recovered beats a certain 503.
        """
        live = [r for r in self._ordered if r.url not in exclude and r.routable(now)]
        if live:
            return live
        waiting = [
            r
            for r in self._ordered
            if r.url not in exclude and r.ready and r.probe_ok and not r.draining(now)
        ]
        if not waiting:
            return []
        return [min(waiting, key=lambda r: r.backoff_until)]

    def dispatch(self, replica: Replica, now: float) -> Ticket:
        return replica.dispatch(now, next(self._ticket_ids))
