"""GPU data-sheet figures the analytic parts of the latency model and KV sizing need.

Only used where nothing was measured: memory size for KV-cache sizing, and peak compute and
memory bandwidth for the roofline attention model (labelled `analytic-roofline` in outputs).
"""

from __future__ import annotations

from dataclasses import dataclass

from block.errors import ConfigError


@dataclass(frozen=True, slots=True)
class GpuSpec:
    name: str
    memory_bytes: int
    bf16_flops: float  # dense tensor-core peak, FLOP/s
    hbm_bytes_per_s: float


GPUS: dict[str, GpuSpec] = {
    # NVIDIA data sheets: A100 SXM4 80 GB, H100 SXM5 80 GB.
    "a100": GpuSpec("a100", 80 * 2**30, 312e12, 2.039e12),
    "h100": GpuSpec("h100", 80 * 2**30, 989e12, 3.35e12),
}


def get_gpu(name: str) -> GpuSpec:
    key = name.lower()
    if key not in GPUS:
        raise ConfigError(f"unknown GPU {name!r}; known: {', '.join(sorted(GPUS))}")
    return GPUS[key]
