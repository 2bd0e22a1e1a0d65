"""One engine replica, step by step: the engine's scheduler emulated on a virtual clock.

Two scheduler flavours share one loop:

- `vllm` (vLLM v1): a token budget per step (`max_num_batched_tokens`), at most `max_num_seqs`
  running, chunked prefill, running requests before waiting ones, FCFS admission, paged KV
  blocks allocated as tokens are computed, preemption by recompute of the newest running
  request, and no admission in a step that preempted.
- `sarathi` (Sarathi-Serve as Vidur and vLLM v0 run it): the same budget ("chunk size") and
  batch cap, but a request's whole prompt is allocated when it is admitted and admission keeps
  a watermark of free blocks.

Speed: decoding requests are not visited per step. Each decoding request is an immutable
record keyed against a global decode-step counter `G` (its cached length is `key + G`), so a
decode step costs O(1) plus O(events), and a stretch of identical decode-only steps (no
admission possible, nobody finishing) runs as one "run" whose time is summed in closed form.
Forking copies containers of immutable records, which is what makes "what if one more
request?" cheap.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from block.errors import ConfigError, InvalidRequest
from block.simulator.hardware import GpuSpec
from block.simulator.latency import LatencyModel
from block.simulator.models import ModelShape
from block.simulator.prefix_cache import PrefixCache
from block.simulator.requests import Recorder, Request

SchedulerKind = Literal["vllm", "sarathi"]


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    """The engine's scheduler settings, named as vLLM names them."""

    scheduler: SchedulerKind = "vllm"
    max_num_batched_tokens: int = 2048  # token budget per step (Sarathi: chunk size)
    max_num_seqs: int = 256
    block_size: int = 16
    num_blocks: int | None = None  # None: size from GPU memory and model weights
    gpu_memory_utilization: float = 0.9
    watermark: float = -1.0  # share of blocks kept free at admission; -1: flavour default
    max_model_len: int | None = None
    max_run_steps: int = 1 << 30  # 1 disables decode-run skipping (real-time twins)
    enable_prefix_caching: bool = True  # as vLLM; only requests carrying block hashes hit

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < self.max_num_seqs and self.scheduler == "vllm":
            # vLLM refuses this too: every running request must fit one decode token a step.
            raise ConfigError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"max_num_seqs ({self.max_num_seqs})"
            )
        if self.max_num_batched_tokens <= 0 or self.max_num_seqs <= 0 or self.block_size <= 0:
            raise ConfigError("token budget, max_num_seqs and block_size must be positive")

    @property
    def watermark_share(self) -> float:
        if self.watermark >= 0:
            return self.watermark
        return 0.01 if self.scheduler == "sarathi" else 0.0


def kv_blocks_for_memory(
    model: ModelShape, gpu: GpuSpec, tensor_parallel: int, cfg: ReplicaConfig
) -> int:
    """KV blocks vLLM would get: usable memory minus weights and an activation reserve."""
    usable = gpu.require_memory() * cfg.gpu_memory_utilization
    # Peak activations of the largest batch (vLLM measures them with a dummy forward pass);
    # a few hidden-size buffers per token plus the MLP's expanded buffer, and a fixed
    # allowance for the CUDA graphs and allocator slack.
    tokens = cfg.max_num_batched_tokens
    act = tokens * (8 * model.hidden_size + 2 * model.intermediate_size // tensor_parallel) * 2
    reserve = act + 1.5 * 2**30
    free = usable - model.weight_bytes(tensor_parallel) - reserve
    block_bytes = cfg.block_size * model.kv_bytes_per_token(tensor_parallel)
    blocks = int(free // block_bytes)
    if blocks <= 0:
        raise ConfigError(f"{model.name} does not fit on {gpu.name} with TP {tensor_parallel}")
    return blocks


class _Prefill:
    """A running request that is computing its prompt (or recomputing after preemption)."""

    __slots__ = ("blocks", "computed", "generated", "req", "shared", "target")

    def __init__(self, req: Request, generated: int, blocks: int) -> None:
        self.req = req
        self.generated = generated  # tokens generated before this prefill (recompute)
        self.target = req.prompt_tokens + generated  # tokens to compute before sampling
        self.computed = 0
        self.blocks = blocks  # KV blocks in its table, shared ones included
        self.shared: list[int] = []  # hashes of prefix-cache blocks it holds references on

    def copy(self) -> _Prefill:
        other = _Prefill.__new__(_Prefill)
        other.req, other.generated, other.target = self.req, self.generated, self.target
        other.computed, other.blocks = self.computed, self.blocks
        other.shared = self.shared.copy()
        return other


class _Decode:
    """A decoding request. Immutable: its state follows from the global counter G.

    cached KV tokens = key + G; tokens generated = key + G + 1 - prompt; finishes when G
    reaches `finish_g`.
    """

    __slots__ = ("finish_g", "key", "req", "shared")

    def __init__(self, req: Request, key: int, finish_g: int, shared: tuple[int, ...] = ()) -> None:
        self.req = req
        self.key = key
        self.finish_g = finish_g
        self.shared = shared  # prefix-cache blocks it references (not private)


class _Run:
    """Decode-only steps in flight: `steps` identical batches of `n` decodes from counter g0."""

    __slots__ = ("end_s", "first_s", "g0", "last_s", "n", "start_s", "steps", "used_before")

    def __init__(
        self,
        start_s: float,
        g0: int,
        steps: int,
        n: int,
        first_s: float,
        last_s: float,
        used_before: int,
    ) -> None:
        self.start_s = start_s
        self.g0 = g0
        self.steps = steps
        self.n = n
        self.first_s = first_s  # duration of the first step
        self.last_s = last_s  # of the last (durations grow linearly with the cached KV)
        self.used_before = used_before  # KV blocks in use before the run's allocations
        self.end_s = start_s + self.elapsed(steps)

    def steps_done(self, offset: float) -> int:
        """The largest j <= steps with elapsed(j) <= offset (closed form, then exact)."""
        f = self.first_s
        slope = (self.last_s - f) / (self.steps - 1) if self.steps > 1 else 0.0
        if slope > 1e-15:
            # j*f + slope*j*(j-1)/2 = offset, solved for j.
            b = f - slope / 2
            j = int((-b + math.sqrt(b * b + 2 * slope * max(offset, 0.0))) / slope)
        else:
            j = int(max(offset, 0.0) / f) if f > 0 else self.steps
        j = min(max(j, 0), self.steps)
        while j > 0 and self.elapsed(j) > offset:
            j -= 1
        while j < self.steps and self.elapsed(j + 1) <= offset:
            j += 1
        return j

    def elapsed(self, j: int) -> float:
        """Time for the first j steps."""
        if self.steps <= 1:
            return j * self.first_s
        slope = (self.last_s - self.first_s) / (self.steps - 1)
        return j * self.first_s + slope * j * (j - 1) / 2


@dataclass(slots=True)
class _Mixed:
    """One general step in flight: all decodes plus prefill chunks (rid, tokens)."""

    start_s: float
    end_s: float
    n: int
    chunks: list[tuple[int, int]]


StepHook = Callable[[float, list[int], list[int]], None]


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One engine step, or a run of `steps` identical decode-only steps."""

    start_s: float
    end_s: float
    steps: int
    num_decode: int
    prefill_tokens: int
    kv_used_blocks: int


class Replica:
    """The engine replica's scheduler and queue state on a virtual clock."""

    def __init__(
        self,
        latency: LatencyModel,
        config: ReplicaConfig,
        replica_id: int = 0,
        recorder: Recorder | None = None,
    ) -> None:
        self.latency = latency
        self.config = config
        self.replica_id = replica_id
        self.num_blocks = config.num_blocks or kv_blocks_for_memory(
            latency.model, latency.gpu, latency.tensor_parallel, config
        )
        self.max_model_len = config.max_model_len or latency.model.max_model_len
        self._bs = config.block_size
        self._watermark_blocks = int(config.watermark_share * self.num_blocks)
        self._upfront = config.scheduler == "sarathi"
        self.cache = PrefixCache() if config.enable_prefix_caching else None
        self.recorder = recorder if recorder is not None else Recorder()
        self.on_step: StepHook | None = None  # (end time, rids with a new token, rids done)
        # State.
        self.now = 0.0
        self.waiting: deque[tuple[Request, int]] = deque()  # (request, tokens generated)
        self.waiting_tokens = 0  # prompt + generated tokens of everything waiting (routers read it)
        self.running: dict[int, _Prefill | _Decode] = {}  # admission order
        self.prefills: list[_Prefill] = []
        self.used_blocks = 0
        self.g = 0  # decode steps done
        self.n_dec = 0
        self.sum_key = 0
        self.residues = [0] * self._bs  # decoding requests by key mod block size
        self.finish_heap: list[tuple[int, int, _Decode]] = []
        self._seq = itertools.count()
        self.inflight: _Run | _Mixed | None = None
        # Counters.
        self.num_steps = 0
        self.step_log: list[StepRecord] | None = None  # set to [] to record every step
        self.busy_s = 0.0
        self.num_preemptions = 0

    # ------------------------------------------------------------------ queries
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def free_blocks(self) -> int:
        return self.num_blocks - self.used_blocks

    @property
    def idle(self) -> bool:
        return self.inflight is None and not self.running and not self.waiting

    @property
    def next_event_s(self) -> float | None:
        return None if self.inflight is None else self.inflight.end_s

    def waiting_prefill_tokens(self) -> int:
        """Prompt tokens still to compute: waiting requests plus unfinished prefills."""
        return self.waiting_tokens + sum(p.target - p.computed for p in self.prefills)

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self._bs)

    # ------------------------------------------------------------------ fork
    def fork(self, recorder: Recorder | None = None) -> Replica:
        """An independent copy of the state; the parent is never touched by the child."""
        other = Replica.__new__(Replica)
        other.latency, other.config, other.replica_id = self.latency, self.config, self.replica_id
        other.num_blocks, other.max_model_len = self.num_blocks, self.max_model_len
        other._bs, other._watermark_blocks, other._upfront = (
            self._bs,
            self._watermark_blocks,
            self._upfront,
        )
        other.recorder = recorder if recorder is not None else Recorder()
        other.cache = None if self.cache is None else self.cache.copy()
        other.on_step = None
        other.now = self.now
        other.waiting = self.waiting.copy()
        other.waiting_tokens = self.waiting_tokens
        running = self.running.copy()
        prefills = []
        for p in self.prefills:
            c = p.copy()
            running[p.req.rid] = c
            prefills.append(c)
        other.running, other.prefills = running, prefills
        other.used_blocks, other.g, other.n_dec, other.sum_key = (
            self.used_blocks,
            self.g,
            self.n_dec,
            self.sum_key,
        )
        other.residues = self.residues.copy()
        other.finish_heap = self.finish_heap.copy()
        other._seq = itertools.count(next(self._seq))
        inflight = self.inflight
        if isinstance(inflight, _Run):
            inflight = _Run(
                inflight.start_s, inflight.g0, inflight.steps, inflight.n,
                inflight.first_s, inflight.last_s, inflight.used_before,
            )  # fmt: skip
        elif isinstance(inflight, _Mixed):
            inflight = _Mixed(inflight.start_s, inflight.end_s, inflight.n, inflight.chunks)
        other.inflight = inflight
        other.num_steps, other.busy_s, other.num_preemptions = 0, 0.0, 0
        other.step_log = None
        return other

    # ------------------------------------------------------------------ input
    def validate(self, req: Request) -> None:
        if req.prompt_tokens <= 0 or req.output_tokens <= 0:
            raise InvalidRequest("prompt and output must each be at least one token")
        total = req.prompt_tokens + req.output_tokens
        if total > self.max_model_len:
            raise InvalidRequest(
                f"prompt ({req.prompt_tokens}) + output ({req.output_tokens}) tokens exceed "
                f"the model's context of {self.max_model_len}"
            )
        if self._blocks(total) > self.num_blocks - self._watermark_blocks:
            raise InvalidRequest(
                f"request needs more KV blocks than the replica has ({total} tokens)"
            )

    def submit(self, req: Request, now: float) -> None:
        """A request arrives at `now`; it joins the queue at the next step boundary."""
        self.validate(req)
        self.advance_to(now)
        self.interrupt(now)
        self.recorder.arrival[req.rid] = req.arrival_s
        self.waiting.append((req, 0))
        self.waiting_tokens += req.prompt_tokens
        if self.inflight is None:
            self.now = max(self.now, now)
            self._start_step()

    # ------------------------------------------------------------------ live-twin corrections
    def abort(self, rid: int, now: float) -> bool:
        """Drop request `rid` wherever it is (waiting, prefilling, decoding) and free its KV
        blocks, as the engine does when a client goes away. The step in flight keeps its
        planned duration. Returns False when the replica does not hold `rid`."""
        self.advance_to(now)
        entry = self.running.pop(rid, None)
        if entry is None:
            for i, (req, _) in enumerate(self.waiting):
                if req.rid == rid:
                    self.waiting_tokens -= req.prompt_tokens + self.waiting[i][1]
                    del self.waiting[i]
                    return True
            return False
        if isinstance(entry, _Prefill):
            self.prefills.remove(entry)
            self._free_request(entry.req, entry.shared, entry.blocks, entry.computed)
            return True
        self.n_dec -= 1
        self.sum_key -= entry.key
        self.residues[entry.key % self._bs] -= 1
        cached = entry.key + self.g  # KV tokens after the last applied decode step
        step = self.inflight
        # A run allocated every step's blocks up front; a mixed step its one token's.
        if isinstance(step, _Run):
            ahead = step.steps
        else:
            ahead = 1 if isinstance(step, _Mixed) and step.n else 0
        before = self.used_blocks
        self._free_request(entry.req, entry.shared, self._blocks(cached + ahead), cached)
        if isinstance(step, _Run):
            run_blocks = self._blocks(cached + ahead) - self._blocks(cached)
            step.used_before -= before - self.used_blocks - run_blocks
        return True

    def resume(self, req: Request, generated: int, now: float) -> None:
        """Put a request the engine is decoding, `generated` tokens in, into the batch.

        Live twins correct their model's view with `abort` + `resume` when the engine reports
        progress the model did not foresee. The request joins the running set last in
        admission order; when its KV blocks do not fit (or the batch is full), it waits at the
        head of the queue for recompute, as a preempted request would.
        """
        if not 1 <= generated < req.output_tokens:
            raise InvalidRequest(
                f"resume needs 1 <= generated ({generated}) < output_tokens ({req.output_tokens})"
            )
        if req.rid in self.running or any(r.rid == req.rid for r, _ in self.waiting):
            raise InvalidRequest(f"request {req.rid} is already in the replica")
        self.validate(req)
        self.advance_to(now)
        self.interrupt(now)
        rec = self.recorder
        rec.arrival.setdefault(req.rid, req.arrival_s)
        rec.scheduled.setdefault(req.rid, now)
        rec.first_token.setdefault(req.rid, now)
        cached = req.prompt_tokens + generated - 1  # the last sampled token is not cached yet
        step = self.inflight
        # Decode steps applied by `now` and the ones in flight (a run cut by `interrupt` has
        # one step left unless `now` fell in its last step).
        if isinstance(step, _Run):
            done, in_step = self.g + step.steps - 1, step.steps
        else:
            done, in_step = self.g, 1 if isinstance(step, _Mixed) and step.n else 0
        held = self._blocks(cached + 1 if in_step else cached)
        free = self.num_blocks - self.used_blocks
        if held > free or len(self.running) >= self.config.max_num_seqs:
            self.waiting.appendleft((req, generated))
            self.waiting_tokens += req.prompt_tokens + generated
        else:
            key = cached - done
            member = _Decode(req, key, done + req.output_tokens - generated)
            self.running[req.rid] = member
            self.n_dec += 1
            self.sum_key += key
            self.residues[key % self._bs] += 1
            heapq.heappush(self.finish_heap, (member.finish_g, next(self._seq), member))
            self.used_blocks += held
            if isinstance(step, _Run):
                step.used_before += self._blocks(key + self.g)
        if self.inflight is None:
            self.now = max(self.now, now)
            self._start_step()

    def progress(self, rid: int) -> int | None:
        """Tokens `rid` has generated as of the last applied step (call `interrupt(now)` first
        inside a decode run); None when the replica does not hold it."""
        entry = self.running.get(rid)
        if entry is None:
            for req, generated in self.waiting:
                if req.rid == rid:
                    return generated
            return None
        if isinstance(entry, _Prefill):
            return entry.generated
        return entry.key + self.g + 1 - entry.req.prompt_tokens

    # ------------------------------------------------------------------ time
    def advance_to(self, t: float) -> None:
        """Complete every step that ends at or before `t` (starting the next ones)."""
        inflight = self.inflight
        while inflight is not None and inflight.end_s <= t:
            self._complete()
            inflight = self.inflight
        if inflight is None and self.now < t:
            self.now = t

    def interrupt(self, t: float) -> None:
        """Cut a decode run at the first step boundary at or after `t`, so that a request
        arriving at `t` is seen by the scheduler at the next step, as in the real engine."""
        run = self.inflight
        if not isinstance(run, _Run) or run.steps <= 1 or t >= run.end_s:
            return
        offset = t - run.start_s
        lo, hi = 0, run.steps  # largest j with elapsed(j) <= offset
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if run.elapsed(mid) <= offset:
                lo = mid
            else:
                hi = mid - 1
        done = lo
        if done + 1 >= run.steps:
            return
        # Keep the j completed steps plus the one in flight; give back later allocations.
        step_start = run.start_s + run.elapsed(done)
        step_s = run.elapsed(done + 1) - run.elapsed(done)
        self.used_blocks = run.used_before + self._decode_blocks_needed(run.g0, done + 1)
        if done:
            self._apply_decode_steps(run.g0, done, step_start)
            self.num_steps += done
            self.busy_s += step_start - run.start_s
            if self.step_log is not None:
                self.step_log.append(
                    StepRecord(run.start_s, step_start, done, run.n, 0, self.used_blocks)
                )
        used_before = run.used_before + self._decode_blocks_needed(run.g0, done)
        self.inflight = _Run(step_start, run.g0 + done, 1, run.n, step_s, step_s, used_before)

    def run_until_finished(self, rid: int, horizon_s: float = float("inf")) -> bool:
        """Simulate forward until request `rid` completes (False if it cannot by horizon)."""
        finished = self.recorder.finished
        while rid not in finished:
            inflight = self.inflight
            if inflight is None or inflight.end_s > horizon_s:
                return False
            self._complete()
            if self.waiting or self.prefills or horizon_s != float("inf"):
                continue
            member = self.running.get(rid)
            if isinstance(member, _Decode) and self.inflight is not None:
                self._drain_to(member.finish_g)
        return True

    def _drain_to(self, target_g: int) -> None:
        """Fast path for predictions: nothing waits and nothing prefills, so every step until
        counter `target_g` is decode-only and only finishes change the batch. Replays the
        in-flight run and the ones after it in one loop, without planning objects."""
        run = self.inflight
        if not isinstance(run, _Run) or run.g0 != self.g:
            return
        if self._decode_blocks_needed(self.g, target_g - self.g) > self.free_blocks + (
            self.used_blocks - run.used_before
        ):
            return  # might run out of KV blocks: let the general loop handle preemptions
        self.used_blocks = run.used_before
        heap, running, lat = self.finish_heap, self.running, self.latency
        t = run.start_s
        while self.g < target_g:
            while running.get(heap[0][2].req.rid) is not heap[0][2]:
                heapq.heappop(heap)
            g, n, base = self.g, self.n_dec, self.sum_key
            steps = min(heap[0][0], target_g) - g
            first = lat.decode_step_s(n, base + n * g)
            last = lat.decode_step_s(n, base + n * (g + steps - 1)) if steps > 1 else first
            self.used_blocks += self._decode_blocks_needed(g, steps)
            t += steps * (first + last) / 2
            self.num_steps += steps
            if self.step_log is not None:
                self.step_log.append(
                    StepRecord(t - steps * (first + last) / 2, t, steps, n, 0, self.used_blocks)
                )
            self._apply_decode_steps(g, steps, t)
        self.busy_s += t - run.start_s
        self.now = t
        self.inflight = None
        if self.running or self.waiting:
            self._start_step()

    def run_until_idle(self, horizon_s: float = float("inf")) -> None:
        while self.inflight is not None and self.inflight.end_s <= horizon_s:
            self._complete()

    # ------------------------------------------------------------------ scheduling
    def _decode_blocks_needed(self, g0: int, steps: int) -> int:
        """New KV blocks the decoding requests need over `steps` steps from counter g0.

        A request with key r needs a block at step j when (r + g0 + j) % bs == 0: every
        request once per full cycle of bs steps, plus, in the last partial cycle of `rem`
        steps, the residues r in the cyclic window starting at (-g0 - rem + 1) % bs.
        """
        if steps <= 0:
            return 0
        bs = self._bs
        cycles, rem = divmod(steps, bs)
        total = cycles * self.n_dec
        if rem:
            c = self.residues
            s = (-g0 - rem + 1) % bs
            end = s + rem
            total += sum(c[s:end]) if end <= bs else sum(c[s:]) + sum(c[: end - bs])
        return total

    def _preempt_tail(self) -> bool:
        """Preempt the newest running request (recompute). True if it was decoding and
        needed a new block this step."""
        rid = next(reversed(self.running))
        entry = self.running.pop(rid)
        req = entry.req
        needed_block = False
        if isinstance(entry, _Decode):
            cached = entry.key + self.g
            needed_block = cached % self._bs == 0
            self.n_dec -= 1
            self.sum_key -= entry.key
            self.residues[entry.key % self._bs] -= 1
            self._free_request(req, entry.shared, self._blocks(cached), cached)
            generated = cached + 1 - req.prompt_tokens
        else:
            self.prefills.remove(entry)
            self._free_request(req, entry.shared, entry.blocks, entry.computed)
            generated = entry.generated
        self.waiting.appendleft((req, generated))
        self.waiting_tokens += req.prompt_tokens + generated
        self.num_preemptions += 1
        rec = self.recorder.preemptions
        rec[rid] = rec.get(rid, 0) + 1
        return needed_block

    def _start_step(self) -> None:
        """Plan the next step at `self.now`, or go idle when there is nothing to do."""
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        preempted = False
        # 1. Running decodes, each one token; preempt the newest until their blocks fit.
        need = self.residues[(-self.g) % self._bs] if self.n_dec else 0
        while need > self.num_blocks - self.used_blocks:
            preempted = True
            if self._preempt_tail():
                need -= 1
        n = self.n_dec
        budget -= n
        # A stretch of identical decode-only steps runs as one.
        if (
            n
            and not self.prefills
            and not preempted
            and cfg.max_run_steps > 1
            and not self._can_admit(budget, len(self.running))
        ):
            steps = self._run_length()
            if steps > 1:
                self._start_run(steps)
                return
        self.used_blocks += need
        chunks: list[tuple[int, int]] = []
        pairs: list[tuple[int, int]] = []
        tokens = n
        # 2. Running prefills, in admission order.
        for p in list(self.prefills):
            if budget <= 0:
                break
            if self.running.get(p.req.rid) is not p:
                continue  # preempted while making room for an earlier one
            num = min(p.target - p.computed, budget)
            extra = self._blocks(p.computed + num) - p.blocks
            while extra > self.num_blocks - self.used_blocks:
                preempted = True
                victim_is_self = next(reversed(self.running)) == p.req.rid
                if self._preempt_tail():
                    self.used_blocks -= 1  # the victim's block for this step, taken above
                if victim_is_self:
                    break
            if self.running.get(p.req.rid) is not p:
                continue
            if extra > 0:
                p.blocks += extra
                self.used_blocks += extra
            chunks.append((p.req.rid, num))
            pairs.append((num, p.computed))
            budget -= num
            tokens += num
        # 3. Waiting requests, FCFS, while budget, batch cap and blocks allow.
        if not preempted or self._upfront:
            cache, bs = self.cache, self._bs
            while self.waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
                req, generated = self.waiting[0]
                target = req.prompt_tokens + generated
                hit = revived = 0
                hashes = req.block_hashes
                if cache is not None and hashes:
                    # At least one token is computed, so a full hit still runs its last block.
                    hit, revived = cache.match(hashes, (target - 1) // bs)
                done = hit * bs
                num = min(target - done, budget)
                blocks = self._blocks(target if self._upfront else done + num) - hit
                free = self.num_blocks - self.used_blocks - self._watermark_blocks
                if blocks + revived > free:
                    break
                self.waiting.popleft()
                self.waiting_tokens -= target
                p = _Prefill(req, generated, hit + blocks)
                if hit and cache is not None and hashes:
                    p.computed = done
                    p.shared = list(hashes[:hit])
                    cache.acquire(p.shared)
                self.used_blocks += blocks + revived
                self.running[req.rid] = p
                self.prefills.append(p)
                self.recorder.scheduled.setdefault(req.rid, self.now)
                self.recorder.cached_tokens.setdefault(req.rid, done)
                chunks.append((req.rid, num))
                pairs.append((num, done))
                budget -= num
                tokens += num
        if tokens == 0:
            self.inflight = None
            return
        self._fit_cache()
        kv_total = self.sum_key + n * self.g
        step_s = self.latency.step_time_s(tokens, n, kv_total, pairs)
        self.inflight = _Mixed(self.now, self.now + step_s, n, chunks)

    def _can_admit(self, budget: int, running: int) -> bool:
        if not self.waiting or budget <= 0 or running >= self.config.max_num_seqs:
            return False
        req, generated = self.waiting[0]
        target = req.prompt_tokens + generated
        blocks = self._blocks(target if self._upfront else min(target, budget))
        return blocks <= self.num_blocks - self.used_blocks - self._watermark_blocks

    def _run_length(self) -> int:
        """How many identical decode-only steps can run before anything changes."""
        heap = self.finish_heap
        while heap and self.running.get(heap[0][2].req.rid) is not heap[0][2]:
            heapq.heappop(heap)  # stale: preempted since
        if not heap:
            return 1
        steps = min(heap[0][0] - self.g, self.config.max_run_steps)
        free = self.num_blocks - self.used_blocks
        # Cheap bound first: nobody needs more than one block per started cycle.
        if self.n_dec * ((steps - 1) // self._bs + 1) > free and (
            self._decode_blocks_needed(self.g, steps) > free
        ):
            lo, hi = 1, steps  # largest run whose allocations fit
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self._decode_blocks_needed(self.g, mid) <= free:
                    lo = mid
                else:
                    hi = mid - 1
            steps = lo
        return steps

    def _start_run(self, steps: int) -> None:
        n, g = self.n_dec, self.g
        lat = self.latency
        first = lat.decode_step_s(n, self.sum_key + n * g)
        last = lat.decode_step_s(n, self.sum_key + n * (g + steps - 1)) if steps > 1 else first
        used_before = self.used_blocks
        self.used_blocks += self._decode_blocks_needed(g, steps)
        self._fit_cache()
        self.inflight = _Run(self.now, g, steps, n, first, last, used_before)

    # ------------------------------------------------------------------ completion
    def _free_request(
        self, req: Request, shared: Sequence[int], total_blocks: int, cached_tokens: int
    ) -> None:
        """Give back a leaving request's KV: private blocks are freed, shared ones lose a
        reference; with prefix caching, full blocks keep their content as evictable cache."""
        cache = self.cache
        if cache is None:
            self.used_blocks -= total_blocks
            return
        self.used_blocks -= total_blocks - len(shared) + cache.release(shared)
        hashes = req.block_hashes
        if hashes:
            cache.keep(hashes[: min(cached_tokens // self._bs, len(hashes))])

    def _fit_cache(self) -> None:
        """Evict least recently freed cached blocks that the allocations just took."""
        cache = self.cache
        if cache is not None:
            excess = len(cache.evictable) - (self.num_blocks - self.used_blocks)
            if excess > 0:
                cache.evict(excess)

    def _apply_decode_steps(self, g0: int, steps: int, end_s: float) -> list[int]:
        """Advance the decode counter by `steps`; finish whoever reached their length."""
        self.g = g0 + steps
        heap, running, g = self.finish_heap, self.running, self.g
        done: list[int] = []
        while heap and heap[0][0] <= g:
            _, _, member = heapq.heappop(heap)
            rid = member.req.rid
            if running.get(rid) is not member:
                continue  # stale entry of a preempted request
            del running[rid]
            self.n_dec -= 1
            self.sum_key -= member.key
            self.residues[member.key % self._bs] -= 1
            cached = member.key + g
            self._free_request(member.req, member.shared, self._blocks(cached), cached)
            self.recorder.finished[rid] = end_s
            done.append(rid)
        return done

    def _complete(self) -> None:
        step = self.inflight
        assert step is not None
        end = step.end_s
        self.busy_s += end - step.start_s
        if self.step_log is not None:
            if isinstance(step, _Run):
                record = StepRecord(step.start_s, end, step.steps, step.n, 0, self.used_blocks)
            else:
                prefill = sum(c for _, c in step.chunks)
                record = StepRecord(step.start_s, end, 1, step.n, prefill, self.used_blocks)
            self.step_log.append(record)
        hook = self.on_step
        decoding = (
            [rid for rid, e in self.running.items() if isinstance(e, _Decode)]
            if hook is not None
            else []
        )
        if isinstance(step, _Run):
            self.num_steps += step.steps
            done = self._apply_decode_steps(step.g0, step.steps, end)
            emitted = decoding
        else:
            self.num_steps += 1
            done = self._apply_decode_steps(self.g, 1, end) if step.n else []
            emitted = decoding + self._finish_chunks(step, end, done)
        if hook is not None:
            hook(end, emitted, done)
        self.now = end
        self.inflight = None
        if self.running or self.waiting:
            self._start_step()

    def _finish_chunks(self, step: _Mixed, end: float, done: list[int]) -> list[int]:
        """Account the step's prefill chunks; return the requests that sampled a token."""
        rec = self.recorder
        emitted: list[int] = []
        for rid, num in step.chunks:
            p = self.running.get(rid)
            if not isinstance(p, _Prefill):
                continue
            before = p.computed
            p.computed += num
            hashes = p.req.block_hashes
            if hashes and self.cache is not None:
                # Newly completed full blocks become shareable (unless already cached).
                for i in range(before // self._bs, min(p.computed // self._bs, len(hashes))):
                    if self.cache.register(hashes[i]):
                        p.shared.append(hashes[i])
            if p.computed < p.target:
                continue
            self.prefills.remove(p)
            generated = p.generated + 1
            rec.first_token.setdefault(rid, end)
            emitted.append(rid)
            req = p.req
            if generated >= req.output_tokens:
                del self.running[rid]
                self._free_request(req, p.shared, p.blocks, p.computed)
                rec.finished[rid] = end
                done.append(rid)
                continue
            key = p.target - self.g
            member = _Decode(req, key, req.output_tokens - generated + self.g, tuple(p.shared))
            self.running[rid] = member  # same place in admission order
            self.n_dec += 1
            self.sum_key += key
            self.residues[key % self._bs] += 1
            heapq.heappush(self.finish_heap, (member.finish_g, next(self._seq), member))
        return emitted
