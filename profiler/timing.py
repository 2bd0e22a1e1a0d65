"""CUDA-event timing of one operator, cold-cache like inside a real forward pass.

Needs torch (the `gpu` extra).

Each repeat first overwrites a buffer several times the L2 size, so weights and KV are read from
HBM as they are in a model whose every layer has its own (an H100's 50 MB L2 would otherwise hold
a small projection's weights and time the cache). A GPU spin follows, longer than the host needs
to queue the operator (measured per operator during warm-up), so the GPU reaches the start event
only once the operator is queued behind it: the events bracket GPU work only, not Python,
torch.compile guards or launch latency. Serving engines replay CUDA graphs, where that host time
is gone; what remains of it per step is measured separately (the step validation's overhead).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from block.profiler.tables import Stats

L2_FLUSH_BYTES = 256 * 2**20
# GPU spin before each timed call, in seconds; at least MIN_SPIN_S, and at least twice the
# host-side time of one call (torch.compile'd functions spend tens of microseconds in guards and
# wrappers before their kernel is queued).
MIN_SPIN_S = 50e-6
SPIN_CLOCK_HZ = 1.98e9  # H100 SXM boost clock; a slower clock only spins longer (safe side)


class Timer:
    """Times callables with CUDA events after warm-up; returns millisecond stats."""

    def __init__(self, warmup: int = 3, repeats: int = 10) -> None:
        if warmup < 0 or repeats < 1:
            raise ValueError("warm-up must be >= 0 and repeats >= 1")
        self.warmup = warmup
        self.repeats = repeats
        self._flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
        self._spin = getattr(torch.cuda, "_sleep", None)

    def _host_time_s(self, fn: Callable[[], object]) -> float:
        """Host-side time to queue one call (the GPU is kept busy so the queue never drains)."""
        samples = []
        for _ in range(max(self.warmup, 1)):
            if self._spin is not None:
                self._spin(int(1e-3 * SPIN_CLOCK_HZ))
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
        return max(samples[len(samples) // 2 :])  # the slower half: be generous

    def time(self, fn: Callable[[], object]) -> Stats:
        fn()  # first call: compilation, cuBLAS heuristics, allocator growth
        torch.cuda.synchronize()
        spin_s = max(MIN_SPIN_S, 2.0 * self._host_time_s(fn) + 20e-6)
        spin_cycles = int(spin_s * SPIN_CLOCK_HZ)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
        for start, end in zip(starts, ends, strict=True):
            self._flush.zero_()
            if self._spin is not None:
                self._spin(spin_cycles)
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return Stats.of([float(s.elapsed_time(e)) for s, e in zip(starts, ends, strict=True)])
