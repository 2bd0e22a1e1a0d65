"""The live twin: a simulator replica that follows the engine's queue as the sidecar sees it.

Fed by what passes through the proxy: an arrival is submitted with its assumed length (the
gateway's estimate, or the request's own limit when `ignore_eos` fixes it, or the prior); each
streamed token is counted; a completion or a cancellation removes the request. Between events
the replica runs on its own model of the engine, and is corrected where reality disagrees:

- the twin finished a request the engine is still producing: the request is put back at the
  progress the engine reported; if it has outrun its assumed length, its new length is
  `l + E[L - l | L > l]` from the length distribution (never a constant);
- at most every `sync_interval_s`, each streamed request whose progress in the twin differs
  from the tokens actually streamed is reset to the truth (`abort` + `resume`).

Predictions fork the replica (`predict_one_more`); the parent is never touched.

Prefix cache: a request that arrives with its prompt's block hashes (`prefix_cache`) takes and
registers prefix blocks in the twin as the engine does; once it finishes, `remember` adds the
blocks of its answer (the sidecar hashes the streamed text re-tokenized, an approximation of
the ids the engine generated), so the next turn of a conversation hits them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from block.errors import InvalidRequest
from block.predictor.lengths import LengthDistribution
from block.simulator.latency import LatencyModel
from block.simulator.prediction import Prediction, predict_one_more
from block.simulator.replica import Replica, ReplicaConfig
from block.simulator.requests import Request

# Tokens of disagreement tolerated before a resync: streaming delivers a step's tokens a little
# after the step ends, so a difference of one is normal.
SYNC_TOLERANCE = 1


@dataclass(slots=True)
class Tracked:
    """One in-flight request, as the sidecar knows it."""

    rid: int
    arrival_s: float
    prompt_tokens: int
    cap: int  # most tokens it may produce (max_tokens, the context left)
    output_tokens: int  # the length the twin assumes now
    exact: bool  # the length is known (ignore_eos with max_tokens)
    streaming: bool  # tokens are observed one by one
    predicted: Prediction | None = None  # what the twin predicted at arrival
    snapshot: Replica | None = None  # the twin at arrival, until `predicted` is computed
    streamed: int = 0
    first_token_s: float | None = None
    extended: int = 0
    done: bool = field(default=False)
    block_hashes: tuple[int, ...] | None = None  # the prompt's prefix-cache hash chain
    cached_tokens: int = 0  # prompt tokens the twin expected the engine's prefix cache to hold


@dataclass(frozen=True, slots=True)
class Outcome:
    """A completed request: predicted at arrival vs what happened (seconds)."""

    predicted: Prediction | None
    ttft_s: float | None  # None when not streamed
    e2e_s: float
    output_tokens: int


@dataclass(frozen=True, slots=True)
class TwinLoad:
    num_running: int
    num_waiting: int
    used_blocks: int
    num_blocks: int
    block_size: int
    waiting_prefill_tokens: int

    @property
    def kv_used_ratio(self) -> float:
        return self.used_blocks / self.num_blocks if self.num_blocks else 0.0


Clock = Callable[[], float]
# Called before a streamed token is counted: (request, now, tokens). The calibrator listens.
TokenHook = Callable[[Tracked, float, int], None]


class LiveTwin:
    """The replica plus what the proxy knows about each request; single-threaded (one loop)."""

    def __init__(
        self,
        latency: LatencyModel,
        config: ReplicaConfig,
        lengths: LengthDistribution,
        sync_interval_s: float = 0.05,
        prior_output_tokens: int | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.replica = Replica(latency, config)
        self.lengths = lengths
        self.sync_interval_s = sync_interval_s
        self.prior_output_tokens = prior_output_tokens
        self._clock = clock
        self._t0 = clock()
        self.requests: dict[int, Tracked] = {}
        self._next_rid = 0
        self._last_sync = -math.inf
        self.last_heard_s = -math.inf  # when the engine last sent anything
        self.num_extensions = 0
        self.num_resyncs = 0
        self.on_token: TokenHook | None = None

    # ------------------------------------------------------------------ clock
    def now(self) -> float:
        return self._clock() - self._t0

    def heard(self) -> None:
        self.last_heard_s = self.now()

    def state_age_s(self) -> float:
        return max(0.0, self.now() - self.last_heard_s)

    @property
    def latency(self) -> LatencyModel:
        return self.replica.latency

    def set_latency(self, latency: LatencyModel) -> None:
        """Simulate with another step model from now on (a fit to the engine's real steps);
        the step in flight keeps the duration it was given."""
        self.replica.latency = latency

    def reconfigure(self, config: ReplicaConfig) -> bool:
        """Adopt the engine's real settings (e.g. its KV blocks); only while nothing is in
        flight, so no request's state is lost. True if it changed."""
        if self.requests or config == self.replica.config:
            return False
        self.replica = Replica(self.replica.latency, config)
        return True

    # ------------------------------------------------------------------ lengths
    @property
    def max_model_len(self) -> int:
        return self.replica.max_model_len

    def assume(
        self, prompt_tokens: int, max_tokens: int | None, estimate: int | None, exact: bool
    ) -> tuple[int, int]:
        """(assumed output tokens, cap) for a new request."""
        room = max(1, self.max_model_len - prompt_tokens)
        cap = min(max_tokens, room) if max_tokens else room
        if exact:
            return cap, cap
        if estimate is not None:
            return max(1, min(estimate, cap)), cap
        prior = self.prior_output_tokens or self.lengths.expected(cap)
        return max(1, min(prior, cap)), cap

    def _longer(self, t: Tracked, generated: int) -> int:
        """The total length of a request that has produced `generated` and is not done."""
        if t.exact:
            return max(t.output_tokens, generated + 1)
        if generated < t.output_tokens:
            return t.output_tokens
        return generated + self.lengths.remaining(generated, max(t.cap, generated + 1))

    # ------------------------------------------------------------------ events
    def arrive(
        self,
        prompt_tokens: int,
        output_tokens: int,
        cap: int,
        exact: bool,
        streaming: bool,
        predict: bool = True,
        arrival_s: float | None = None,
        block_hashes: tuple[int, ...] | None = None,
    ) -> Tracked | None:
        """A request went to the engine at `arrival_s` (default: now; the proxy forwards first
        and counts the prompt meanwhile, so it may report a moment later). None when the twin
        cannot hold it (too long for the context or the KV cache): the engine will answer."""
        now = self.now()
        self.settle(now)
        arrival = now if arrival_s is None else min(arrival_s, now)
        rid = self._next_rid
        self._next_rid += 1
        req = Request(rid, arrival, prompt_tokens, output_tokens, block_hashes)
        try:
            self.replica.validate(req)
        except InvalidRequest:
            return None
        t = Tracked(rid, arrival, prompt_tokens, cap, output_tokens, exact, streaming)
        t.block_hashes = block_hashes
        if block_hashes and self.on_token is not None:  # only the step observer reads it
            t.cached_tokens = self.prefix_hit_tokens(prompt_tokens, block_hashes)
        if predict:
            # Forking costs a few µs; the prediction itself (up to ~1 ms under load) is made
            # off the request path by `predict_arrival`, once the request is on its way.
            t.snapshot = self.replica.fork()
        self.replica.submit(req, now)
        self.requests[rid] = t
        return t

    def predict_arrival(self, t: Tracked) -> Prediction | None:
        """What the twin predicted for `t` when it arrived (computed once, from the snapshot
        taken then): the reference for predicted-vs-actual errors."""
        snap = t.snapshot
        if snap is not None:
            t.snapshot = None
            hashes = t.block_hashes if self._hits(snap, t.prompt_tokens, t.block_hashes) else None
            t.predicted = predict_one_more(
                snap, t.prompt_tokens, t.output_tokens, t.arrival_s, block_hashes=hashes
            )
        return t.predicted

    def token(self, t: Tracked, count: int = 1, first_at_s: float | None = None) -> None:
        """`count` more tokens streamed; `first_at_s`: when the first came, if before now."""
        now = self.now()
        if self.on_token is not None and first_at_s is None:
            # Tokens held back until the prompt was counted arrived earlier than now: their
            # time is not this step's, so they are not shown to the listener.
            self.on_token(t, now, count)
        if t.first_token_s is None:
            t.first_token_s = now if first_at_s is None else first_at_s
        t.streamed += count
        self.last_heard_s = now

    def finish(self, t: Tracked, completion_tokens: int | None = None) -> Outcome:
        """The engine finished the request; it leaves the twin."""
        now = self.now()
        self.last_heard_s = now
        predicted = self.predict_arrival(t)
        self._remove(t, now)
        ttft = None if t.first_token_s is None or not t.streaming else t.first_token_s - t.arrival_s
        produced = completion_tokens if completion_tokens is not None else t.streamed
        return Outcome(predicted, ttft, now - t.arrival_s, produced)

    def cancel(self, t: Tracked) -> None:
        """The request failed or its client left; it leaves the twin."""
        self._remove(t, self.now())

    def _remove(self, t: Tracked, now: float) -> None:
        if t.done:
            return
        t.done = True
        t.snapshot = None
        self.requests.pop(t.rid, None)
        self.replica.abort(t.rid, now)
        self._forget(t.rid)

    def _forget(self, rid: int) -> None:
        rec = self.replica.recorder
        for d in (rec.arrival, rec.scheduled, rec.first_token, rec.finished, rec.preemptions):
            d.pop(rid, None)

    # ------------------------------------------------------------------ corrections
    def settle(self, now: float | None = None) -> None:
        """Bring the twin to `now` and apply the corrections due."""
        if now is None:
            now = self.now()
        r = self.replica
        r.advance_to(now)
        if r.recorder.finished:
            self._outran(now)
        if now - self._last_sync >= self.sync_interval_s:
            self._last_sync = now
            self._sync(now)

    def _outran(self, now: float) -> None:
        """Requests the twin finished but the engine has not: put them back."""
        finished = self.replica.recorder.finished
        rids = list(finished)
        finished.clear()
        for rid in rids:
            t = self.requests.get(rid)
            if t is None:
                continue
            # Not streamed: nothing observed, so trust the twin's count (the assumption).
            generated = t.streamed if t.streaming else t.output_tokens
            total = self._longer(t, generated)
            if total > t.output_tokens:
                t.extended += 1
                self.num_extensions += 1
            self._put_back(t, generated, total, now)

    def _put_back(self, t: Tracked, generated: int, total: int, now: float) -> None:
        t.output_tokens = total
        req = Request(t.rid, t.arrival_s, t.prompt_tokens, total, t.block_hashes)
        r = self.replica
        r.abort(t.rid, now)
        try:
            if generated >= 1:
                r.resume(req, generated, now)
            else:  # no token yet: it is still queued or prefilling in the engine
                r.submit(req, now)
        except InvalidRequest:
            # The corrected length no longer fits the context: it cannot go on much longer.
            self.requests.pop(t.rid, None)
            t.done = True
        self._forget_times(t.rid)

    def _forget_times(self, rid: int) -> None:
        # A resumed request's records restart; only `finished` matters (the outbox).
        self.replica.recorder.finished.pop(rid, None)

    def _sync(self, now: float) -> None:
        """Reset the twin's progress of streamed requests to the tokens seen."""
        r = self.replica
        r.interrupt(now)
        for t in list(self.requests.values()):
            if not t.streaming or t.streamed == 0 or (t.exact and t.streamed >= t.output_tokens):
                continue  # nothing seen yet, or its last token is out and it is finishing
            p = r.progress(t.rid)
            if p is None or abs(p - t.streamed) <= SYNC_TOLERANCE:
                continue
            self.num_resyncs += 1
            total = self._longer(t, t.streamed)
            if total > t.output_tokens:
                t.extended += 1
                self.num_extensions += 1
            self._put_back(t, t.streamed, total, now)

    def remember(self, block_hashes: Sequence[int]) -> int:
        """A finished request's blocks (prompt and answer) stay in the engine's prefix cache:
        keep those the twin lacks as evictable, most recent last. Returns how many were new."""
        r = self.replica
        cache = r.cache
        if cache is None or not block_hashes:
            return 0
        self.settle()
        before = len(cache.evictable)
        cache.keep(block_hashes)
        added = len(cache.evictable) - before
        # Cached blocks live in free memory: drop the least recently freed beyond it.
        excess = len(cache.evictable) - (r.num_blocks - r.used_blocks)
        if excess > 0:
            cache.evict(excess)
        return added

    # ------------------------------------------------------------------ queries
    def prefix_hit_tokens(self, prompt_tokens: int, block_hashes: Sequence[int] | None) -> int:
        """Prompt tokens the engine would find cached (at least one token is computed)."""
        cache = self.replica.cache
        if cache is None or not block_hashes:
            return 0
        bs = self.replica.config.block_size
        hit, _ = cache.match(block_hashes, (prompt_tokens - 1) // bs)
        return hit * bs

    def _hits(self, r: Replica, prompt_tokens: int, hashes: Sequence[int] | None) -> bool:
        if r.cache is None or not hashes:
            return False
        return r.cache.match(hashes, (prompt_tokens - 1) // r.config.block_size)[0] > 0

    def predict(
        self,
        candidates: list[tuple[int, int]],
        impact: bool = False,
        block_hashes: Sequence[Sequence[int] | None] | None = None,
    ) -> list[Prediction]:
        """Predicted latencies of each candidate (prompt, output) if it arrived now;
        `block_hashes[i]`: candidate i's prompt hash chain (prefix-cache hits count)."""
        now = self.now()
        self.settle(now)
        bs = self.replica.config.block_size
        out = []
        for i, (prompt, output) in enumerate(candidates):
            hashes = block_hashes[i] if block_hashes is not None else None
            try:
                self.replica.validate(Request(-1, now, prompt, output))
                if hashes and len(hashes) > prompt // bs:
                    raise InvalidRequest(
                        f"{len(hashes)} block hashes cover {len(hashes) * bs} tokens, more "
                        f"than the prompt's {prompt} (blocks of {bs} tokens)"
                    )
            except InvalidRequest as e:
                raise InvalidRequest(f"candidates.{i}: {e.detail}") from e
            # Without a hit the cache changes nothing for the candidate: keep the fast path.
            chain = tuple(hashes) if hashes and self._hits(self.replica, prompt, hashes) else None
            out.append(
                predict_one_more(
                    self.replica, prompt, output, now, impact=impact, block_hashes=chain
                )
            )
        return out

    def load(self) -> TwinLoad:
        r = self.replica
        return TwinLoad(
            r.num_running,
            r.num_waiting,
            r.used_blocks,
            r.num_blocks,
            r.config.block_size,
            r.waiting_prefill_tokens(),
        )
