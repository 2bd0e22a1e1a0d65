"""Hardware figures the analytic parts of the latency model and KV sizing need.

A profile is data, not code: any hardware name with a folder on the profile search path
(`block.simulator.profiles.search_roots()`, e.g. `$BLOCK_PROFILES_DIR/a40/<org>/<model>/mlp.csv`)
is a GPU the simulator can model. Beside the tables, an optional `<name>/spec.json` gives the
figures used only where nothing was measured: memory size for KV-cache sizing, and peak compute
and memory bandwidth for the roofline attention model (labelled `analytic-roofline`). A100 and
H100 carry their data-sheet figures; a spec file overrides them field by field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from block.errors import ConfigError
from block.simulator import profiles

SPEC_FILE = "spec.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True, slots=True)
class GpuSpec:
    name: str
    memory_bytes: int | None = None
    bf16_flops: float | None = None  # dense tensor-core peak, FLOP/s
    hbm_bytes_per_s: float | None = None
    spec_source: str = "none"  # "data sheet", a spec.json path, or "none"

    def require_memory(self) -> int:
        if self.memory_bytes is None:
            raise ConfigError(
                f"no memory size for hardware {self.name!r}: pass the engine's KV blocks "
                f"(--num-blocks) or add memory_bytes to {self.name}/{SPEC_FILE} on the profile "
                "search path"
            )
        return self.memory_bytes

    def require_roofline(self) -> tuple[float, float]:
        if self.bf16_flops is None or self.hbm_bytes_per_s is None:
            raise ConfigError(
                f"hardware {self.name!r} has no measured attention.csv for this model and no "
                f"bf16_flops / hbm_bytes_per_s in {self.name}/{SPEC_FILE} for the analytic model"
            )
        return self.bf16_flops, self.hbm_bytes_per_s


DATA_SHEETS: dict[str, GpuSpec] = {
    # NVIDIA data sheets: A100 SXM4 80 GB, H100 SXM5 80 GB.
    "a100": GpuSpec("a100", 80 * 2**30, 312e12, 2.039e12, "data sheet"),
    "h100": GpuSpec("h100", 80 * 2**30, 989e12, 3.35e12, "data sheet"),
}


def read_spec(path: Path, base: GpuSpec) -> GpuSpec:
    """Fields of a spec.json over `base`: memory_bytes, bf16_flops, hbm_bytes_per_s."""
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("expected a JSON object")
        unknown = set(raw) - {"memory_bytes", "bf16_flops", "hbm_bytes_per_s", "description"}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        spec = replace(
            base,
            memory_bytes=int(raw["memory_bytes"]) if "memory_bytes" in raw else base.memory_bytes,
            bf16_flops=float(raw["bf16_flops"]) if "bf16_flops" in raw else base.bf16_flops,
            hbm_bytes_per_s=(
                float(raw["hbm_bytes_per_s"]) if "hbm_bytes_per_s" in raw else base.hbm_bytes_per_s
            ),
            spec_source=str(path),
        )
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"cannot read hardware spec {path}: {e}") from e
    for field_name in ("memory_bytes", "bf16_flops", "hbm_bytes_per_s"):
        value = getattr(spec, field_name)
        if value is not None and value <= 0:
            raise ConfigError(f"hardware spec {path}: {field_name} must be positive")
    return spec


def known_hardware() -> list[str]:
    """Every hardware name a profile exists for: data sheets plus folders on the search path."""
    names = set(DATA_SHEETS)
    for root in profiles.search_roots():
        if root.is_dir():
            names.update(p.name for p in root.iterdir() if p.is_dir() and _NAME.match(p.name))
    return sorted(names)


def get_gpu(name: str) -> GpuSpec:
    """The spec of a hardware name: its data sheet and/or spec.json, or a bare spec when only
    tables exist (then KV sizing and analytic attention say what is missing when asked)."""
    key = name.lower()
    folders = [root / key for root in profiles.search_roots()] if _NAME.match(key) else []
    found = [f for f in folders if f.is_dir()]
    if key not in DATA_SHEETS and not found:
        raise ConfigError(
            f"unknown GPU {name!r}: no profile folder {key}/ on the search path "
            f"({', '.join(str(r) for r in profiles.search_roots())}); "
            f"known: {', '.join(known_hardware())}"
        )
    spec = DATA_SHEETS.get(key, GpuSpec(key))
    for folder in found:  # the first spec.json on the search path wins
        if (folder / SPEC_FILE).is_file():
            return read_spec(folder / SPEC_FILE, spec)
    return spec
