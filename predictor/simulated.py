"""The engine twin's core: a simulator replica driven in real time on the asyncio loop.

Virtual time is the loop's monotonic clock minus the start. A timer fires when the step in
flight ends; the replica then completes every step that ended by now, and each request that
sampled a token in a step gets it at that step's end. The replica runs step by step
(`max_run_steps=1`) so that every token has its own time.

A real GPU does not follow the profile exactly: `NoisyLatency` scales every step by a bias and
a lognormal factor, so the predictor's twin (which uses the plain profile) faces a realistic
mismatch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from block.simulator.latency import LatencyModel
from block.simulator.replica import Replica, ReplicaConfig
from block.simulator.requests import Request

logger = logging.getLogger(__name__)


class NoisyLatency(LatencyModel):
    """A latency model whose every step takes `bias x exp(N(0, sigma))` times the profile."""

    def __init__(self, base: LatencyModel, sigma: float, bias: float, seed: int) -> None:
        # Share the base model's tables instead of rebuilding them (constructors assign only).
        self.__dict__.update(base.__dict__)
        self.sigma = sigma
        self.bias = bias
        self._rng = random.Random(seed)

    def _factor(self) -> float:
        if self.sigma == 0.0:
            return self.bias
        return self.bias * self._rng.lognormvariate(0.0, self.sigma)

    def step_time_s(
        self,
        num_tokens: int,
        num_decode: int,
        decode_kv_total: int,
        prefill: Sequence[tuple[int, int]] = (),
    ) -> float:
        return super().step_time_s(num_tokens, num_decode, decode_kv_total, prefill) * (
            self._factor()
        )

    def decode_step_s(self, num_decode: int, decode_kv_total: int) -> float:
        return super().decode_step_s(num_decode, decode_kv_total) * self._factor()


@dataclass(slots=True)
class Generation:
    """One request inside the engine twin, as its HTTP handler sees it."""

    rid: int
    prompt_tokens: int
    output_tokens: int
    arrival_s: float
    tokens: asyncio.Queue[int] = field(default_factory=asyncio.Queue)  # 1 per token, 0 = done
    produced: int = 0
    first_token_s: float | None = None
    last_token_s: float | None = None
    finished_s: float | None = None

    @property
    def finished(self) -> bool:
        return self.finished_s is not None


@dataclass(frozen=True, slots=True)
class Load:
    """What vLLM's gauges report."""

    num_running: int
    num_waiting: int
    used_blocks: int
    num_blocks: int
    block_size: int

    @property
    def kv_usage_ratio(self) -> float:
        return self.used_blocks / self.num_blocks if self.num_blocks else 0.0


StepObserver = Callable[[Generation, float], None]


class SimulatedEngine:
    """Requests in, tokens out at the simulated steps' real times."""

    def __init__(self, latency: LatencyModel, config: ReplicaConfig) -> None:
        self.replica = Replica(latency, dataclasses.replace(config, max_run_steps=1))
        self.replica.on_step = self._on_step
        self._live: dict[int, Generation] = {}
        self._next_rid = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._timer: asyncio.TimerHandle | None = None
        # Observers (metrics), called from the clock with the step's end time.
        self.on_first_token: StepObserver | None = None
        self.on_token: StepObserver | None = None  # before `last_token_s` moves on
        self.on_finish: StepObserver | None = None
        # How late the clock reached each step's end (an event loop starved of CPU delivers
        # tokens later than the simulation says): seconds, for a lag histogram.
        self.on_lag: Callable[[float], None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for gen in self._live.values():
            gen.tokens.put_nowait(0)
        self._live.clear()

    def now(self) -> float:
        assert self._loop is not None, "start() first"
        return self._loop.time() - self._t0

    # ------------------------------------------------------------------ requests
    def validate(self, prompt_tokens: int, output_tokens: int) -> None:
        self.replica.validate(Request(-1, 0.0, prompt_tokens, output_tokens))

    def submit(
        self,
        prompt_tokens: int,
        output_tokens: int,
        block_hashes: tuple[int, ...] | None = None,
    ) -> Generation:
        """`block_hashes`: the hash chain of prompt + output ids (prefix caching)."""
        now = self.now()
        rid = self._next_rid
        self._next_rid += 1
        gen = Generation(rid, prompt_tokens, output_tokens, now)
        self.replica.submit(Request(rid, now, prompt_tokens, output_tokens, block_hashes), now)
        self._live[rid] = gen
        self._schedule()
        return gen

    def abort(self, gen: Generation) -> bool:
        """Drop a request whose client went away; False if it had already finished."""
        if self._live.pop(gen.rid, None) is None:
            return False
        self.replica.abort(gen.rid, self.now())
        self._forget(gen.rid)
        self._schedule()
        return True

    @property
    def load(self) -> Load:
        r = self.replica
        return Load(r.num_running, r.num_waiting, r.used_blocks, r.num_blocks, r.config.block_size)

    @property
    def num_preemptions(self) -> int:
        return self.replica.num_preemptions

    # ------------------------------------------------------------------ clock
    def _schedule(self) -> None:
        """Arm the timer for the end of the step in flight (one timer at a time)."""
        nxt = self.replica.next_event_s
        if self._timer is not None:
            if nxt is not None and abs(self._timer.when() - (self._t0 + nxt)) < 1e-9:
                return
            self._timer.cancel()
            self._timer = None
        if nxt is not None and self._loop is not None:
            self._timer = self._loop.call_at(self._t0 + nxt, self._tick)

    def _tick(self) -> None:
        self._timer = None
        try:
            now = self.now()
            due = self.replica.next_event_s
            if self.on_lag is not None and due is not None:
                self.on_lag(max(0.0, now - due))
            self.replica.advance_to(now)
        except Exception:  # a bug must not stop the clock for every other request
            logger.exception("engine twin step failed")
        self._schedule()

    def _on_step(self, end_s: float, emitted: list[int], done: list[int]) -> None:
        live = self._live
        for rid in emitted:
            gen = live.get(rid)
            if gen is None:
                continue
            gen.produced += 1
            if gen.first_token_s is None:
                gen.first_token_s = end_s
                if self.on_first_token is not None:
                    self.on_first_token(gen, end_s)
            if self.on_token is not None:
                self.on_token(gen, end_s)
            gen.last_token_s = end_s
            gen.tokens.put_nowait(1)
        for rid in done:
            gen = live.pop(rid, None)
            if gen is None:
                continue
            gen.finished_s = end_s
            gen.tokens.put_nowait(0)
            if self.on_finish is not None:
                self.on_finish(gen, end_s)
            self._forget(rid)

    def queue_time_s(self, gen: Generation) -> float | None:
        t = self.replica.recorder.scheduled.get(gen.rid)
        return None if t is None else t - gen.arrival_s

    def _forget(self, rid: int) -> None:
        """Drop the replica's records of a request that left (the twin runs for days)."""
        rec = self.replica.recorder
        for d in (rec.arrival, rec.first_token, rec.finished, rec.preemptions, rec.scheduled):
            d.pop(rid, None)
