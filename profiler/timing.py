"""CUDA-event timing of one operator, cold-cache like inside a real forward pass.

Needs torch (the `gpu` extra).

Each repeat first reads a buffer several times the L2 size, so weights and KV come from HBM as
they do in a model whose every layer has its own (an H100's 50 MB L2 would otherwise hold a small
projection's weights and time the cache). Reading, not writing: a zero-fill would leave the L2
full of dirty lines whose write-back the timed operator would pay for (an earlier version did,
and timed decode-sized projections about 20 % slower than they run inside the model).

The events must bracket GPU work only, not the host's: Python, torch.compile guards and launch
latency are gone in the CUDA graphs serving engines replay (what remains per step is measured
separately, as the step validation's overhead). So all repeats are queued behind one GPU spin
that lasts several times longer than the host needs to queue them (measured per operator during
warm-up); the GPU then runs flush, start, op, end, flush, ... back to back. If the spin had
already finished when the host was done queueing (the host was descheduled, say), the GPU may
have waited on the host inside a timed interval: that attempt is discarded and repeated with a
longer spin. On a shared virtual machine such stalls do happen: an earlier version that spun
before each repeat separately had about one operator point in 150 timed 2-60x too slow.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import torch

from block.profiler.tables import Stats

L2_FLUSH_BYTES = 256 * 2**20
MIN_SPIN_S = 1e-3
SPIN_CLOCK_HZ = 1.98e9  # H100 SXM boost clock; a slower clock only spins longer (safe side)
MAX_ATTEMPTS = 4


class Timer:
    """Times callables with CUDA events after warm-up; returns millisecond stats."""

    def __init__(self, warmup: int = 3, repeats: int = 10) -> None:
        if warmup < 0 or repeats < 1:
            raise ValueError("warm-up must be >= 0 and repeats >= 1")
        self.warmup = warmup
        self.repeats = repeats
        self.retries = 0  # attempts discarded because the GPU caught up with the host
        self._flush = torch.ones(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
        spin: Callable[[int], object] | None = getattr(torch.cuda, "_sleep", None)
        if spin is None:
            raise RuntimeError("this PyTorch lacks torch.cuda._sleep, needed to time operators")
        self._spin: Callable[[int], object] = spin

    def _host_time_s(self, fn: Callable[[], object]) -> float:
        """Host-side time to queue one call (the GPU is kept busy so the queue never drains)."""
        samples = []
        for _ in range(max(self.warmup, 1)):
            self._spin(int(1e-3 * SPIN_CLOCK_HZ))
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
        return max(samples)

    def time(self, fn: Callable[[], object]) -> Stats:
        fn()  # first call: compilation, cuBLAS heuristics, allocator growth
        torch.cuda.synchronize()
        per_repeat_s = self._host_time_s(fn) + 50e-6  # plus flush and two event records
        spin_s = max(MIN_SPIN_S, 3.0 * self.repeats * per_repeat_s)
        for attempt in range(MAX_ATTEMPTS):
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
            spun = torch.cuda.Event()
            gc_enabled = gc.isenabled()
            gc.disable()  # a collection mid-queue would stall the host
            try:
                self._spin(int(spin_s * SPIN_CLOCK_HZ))
                spun.record()
                for start, end in zip(starts, ends, strict=True):
                    self._flush.sum()  # evict the L2 with clean lines
                    start.record()
                    fn()
                    end.record()
                caught_up = bool(spun.query())  # spin over before everything was queued?
            finally:
                if gc_enabled:
                    gc.enable()
            torch.cuda.synchronize()
            if not caught_up or attempt == MAX_ATTEMPTS - 1:
                break
            self.retries += 1
            spin_s *= 4
        return Stats.of([float(s.elapsed_time(e)) for s, e in zip(starts, ends, strict=True)])
