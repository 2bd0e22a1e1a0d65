"""Engine steps seen from outside: the streamed tokens of all requests, grouped into steps.

An engine emits one token per running sequence at the end of every step, so the sidecar sees
tokens of different streams arrive in bursts, one burst per step. The gap between the starts of
two bursts is the later step's duration, and the burst says what the step computed: a decode
for every request that had tokens already, a finished prefill for every request whose first
token it carries. That is the observation the fit of the step model needs
(`block.simulator.calibration`), taken from outside the engine with no hook inside it: by the
sidecar as traffic flows, and by `block profile engine` from the work it sends.

Only *clean* steps are reported, where what is visible is all the step did:
- every request that was decoding produced exactly one token in the burst;
- no request that could have been scheduled was left without a token (it may have prefilled a
  chunk of a long prompt, which no stream shows), and no unstreamed request was in flight;
- a first token comes from a prompt that fits the step's token budget beside the decodes.
Steps after an idle spell are skipped (their start is unknown), and so is a step whose prefill
belongs to a request sent after the previous burst: the engine may have idled until it came.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from block.simulator.calibration import StepShape


@dataclass(slots=True)
class _Member:
    count: int  # tokens this request got in the burst
    streamed_before: int
    prompt_tokens: int
    cached_tokens: int
    arrival_s: float


class InFlight(Protocol):
    """What the observer reads of a request in flight (the sidecar passes its own records,
    so a token costs no copy)."""

    @property
    def streaming(self) -> bool: ...
    @property
    def streamed(self) -> int: ...
    @property
    def arrival_s(self) -> float: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Seen:
    """A request in flight as a plain record (an `InFlight`)."""

    streaming: bool
    streamed: int
    arrival_s: float
    prompt_tokens: int
    cached_tokens: int = 0  # prompt tokens the engine is expected to find in its prefix cache


@dataclass(frozen=True, slots=True)
class ObservedStep:
    shape: StepShape
    seconds: float
    end_s: float


@dataclass(slots=True)
class StepCounts:
    """Why bursts were or were not used (exported as a Prometheus counter)."""

    clean: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class StepObserver:
    """Groups token arrivals into steps; `token()` returns the step a burst closed, if clean."""

    def __init__(
        self,
        token_budget: int,
        join_s: float = 0.004,
        max_step_s: float = 10.0,
    ) -> None:
        self.token_budget = token_budget
        self.join_s = join_s
        self.max_step_s = max_step_s
        self.counts = StepCounts()
        self._start: float | None = None  # first token of the open burst
        self._last = -math.inf
        self._members: dict[int, _Member] = {}
        self._prev_start: float | None = None  # first token of the burst before
        self._prev_decoding: frozenset[int] = frozenset()
        self._recent: list[float] = []

    def _window(self) -> float:
        # Tokens of one step reach the sidecar within a few ms of each other; never let the
        # window swallow a whole step of a fast engine.
        if not self._recent:
            return self.join_s
        typical = sorted(self._recent)[len(self._recent) // 2]
        return max(0.0005, min(self.join_s, 0.3 * typical))

    def token(
        self,
        rid: int,
        now: float,
        count: int,
        me: InFlight,
        in_flight: Callable[[], Mapping[int, InFlight]],
    ) -> ObservedStep | None:
        """`count` tokens of request `rid` (as it was before them: `me`) arrived at `now`;
        `in_flight()` lists every request in flight before these tokens are counted, asked only
        when a burst closes (once a step, not once a token). Returns the previous burst's step
        when this token opens a new burst and that step was clean."""
        closed = None
        if self._start is not None and now - self._last > self._window():
            closed = self._close(in_flight())
        if self._start is None:
            self._start = now
        self._last = now
        member = self._members.get(rid)
        if member is None:
            self._members[rid] = _Member(
                count, me.streamed, me.prompt_tokens, me.cached_tokens, me.arrival_s
            )
        else:
            member.count += count
        return closed

    def _close(self, seen: Mapping[int, InFlight]) -> ObservedStep | None:
        start, members = self._start, self._members
        assert start is not None
        prev = self._prev_start
        self._prev_start, self._start, self._members = start, None, {}
        # Who decodes in the next step: everything streamed that is still in flight.
        decoding_next = frozenset(
            rid for rid, s in seen.items() if s.streaming and (s.streamed > 0 or rid in members)
        )
        before, self._prev_decoding = self._prev_decoding, decoding_next
        if prev is None or start - prev > self.max_step_s:
            self.counts.skip("after_idle")
            return None
        seconds = start - prev
        reason = self._unclean(members, before, seen, prev)
        if reason is not None:
            self.counts.skip(reason)
            return None
        decode_kv = 0
        num_decode = 0
        prefill: list[tuple[int, int]] = []
        for m in members.values():
            if m.streamed_before > 0:
                num_decode += 1
                decode_kv += m.prompt_tokens + m.streamed_before
            else:
                cached = min(m.cached_tokens, m.prompt_tokens - 1)
                prefill.append((m.prompt_tokens - cached, cached))
        if num_decode + sum(c for c, _ in prefill) > self.token_budget:
            self.counts.skip("chunked_prefill")
            return None
        self.counts.clean += 1
        self._recent.append(seconds)
        if len(self._recent) > 64:
            del self._recent[:32]
        return ObservedStep(StepShape(num_decode, decode_kv, tuple(prefill)), seconds, start)

    @staticmethod
    def _unclean(
        members: Mapping[int, _Member],
        decoding: frozenset[int],
        seen: Mapping[int, InFlight],
        step_start: float,
    ) -> str | None:
        if any(m.count != 1 for m in members.values()):
            return "merged_tokens"
        if any(rid not in members for rid in decoding):
            return "missing_decode"
        for rid, m in members.items():
            if m.streamed_before > 0 and rid not in decoding:
                return "missing_decode"
            if m.streamed_before == 0 and m.arrival_s > step_start and not decoding:
                return "after_idle"
        for rid, s in seen.items():
            if rid in members:
                continue
            if not s.streaming and s.arrival_s < step_start:
                return "unstreamed_in_flight"
            if s.streaming and s.streamed == 0 and s.arrival_s < step_start:
                return "hidden_prefill"
        return None
