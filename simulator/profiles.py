"""Find and read Vidur-format operator profiles (`mlp.csv`, `attention.csv`).

Search order for a (GPU, model) pair: the folders in `$BLOCK_PROFILES_DIR` (os.pathsep-separated),
the project's own measured tables (`block.data`: `profiles/<gpu>/<org>/<model>/`), then Vidur's
published tables that ship with the package (`vidur/compute/<gpu>/<org>/<model>/`). Attention
and MLP tables may come from different places: the first directory holding each file wins.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from block import data
from block.errors import ConfigError

# The non-attention operators of one transformer layer, as named in Vidur's mlp.csv.
MLP_LAYER_OPS: tuple[str, ...] = (
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)


def search_roots() -> list[Path]:
    """Folders searched for `<gpu>/<org>/<model>/<file>`, first match wins."""
    env = os.environ.get("BLOCK_PROFILES_DIR", "")
    roots = [Path(p) for p in env.split(os.pathsep) if p]
    roots += [data.PROFILES, data.VIDUR_COMPUTE]
    return roots


def find_profile_file(
    gpu: str, model: str, filename: str, tensor_parallel: int | None = None
) -> Path | None:
    """The first `<root>/<gpu>/<model>/<filename>` on the search path; with `tensor_parallel`,
    the first whose table has rows at that degree (the project's H100 tables are TP 1 only,
    Vidur's also have TP 2-8)."""
    for root in search_roots():
        path = root / gpu.lower() / model / filename
        if path.is_file() and (tensor_parallel is None or _has_tp(path, tensor_parallel)):
            return path
    return None


def _has_tp(path: Path, tensor_parallel: int) -> bool:
    try:
        with path.open(newline="") as f:
            return any(
                r.get("num_tensor_parallel_workers") == str(tensor_parallel)
                for r in csv.DictReader(f)
            )
    except OSError:
        return False


def _rows_for_tp(path: Path, tensor_parallel: int, what: str) -> list[dict[str, str]]:
    """The rows of a profile CSV measured at one tensor-parallel degree (at least one)."""
    try:
        with path.open(newline="") as f:
            rows = [
                r
                for r in csv.DictReader(f)
                if int(r["num_tensor_parallel_workers"]) == tensor_parallel
            ]
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(f"cannot read {what} profile {path}: {e}") from e
    if not rows:
        raise ConfigError(f"{path} has no rows for tensor parallel {tensor_parallel}")
    return rows


@dataclass(frozen=True)
class MlpTable:
    """Per-layer non-attention time (seconds) sampled at measured token counts."""

    source: Path
    num_tokens: np.ndarray  # sorted, int
    layer_time_s: np.ndarray  # same length, seconds per layer
    per_op_ms: dict[str, np.ndarray] = field(repr=False)


def read_mlp_table(path: Path, tensor_parallel: int, stat: str = "median") -> MlpTable:
    """Read one TP degree of an mlp.csv and sum the per-layer operators (ms → s)."""
    rows = _rows_for_tp(path, tensor_parallel, "MLP")
    raw_tokens = np.array([int(r["num_tokens"]) for r in rows], dtype=np.int64)
    # Some tables repeat a token count (several profiling passes): average the repeats.
    tokens, inverse = np.unique(raw_tokens, return_inverse=True)
    counts = np.bincount(inverse).astype(float)
    per_op: dict[str, np.ndarray] = {}
    for op in MLP_LAYER_OPS:
        col = f"time_stats.{op}.{stat}"
        if col not in rows[0]:
            continue  # e.g. attn_rope is absent for models without rotary embeddings
        values = np.array([float(r[col] or 0.0) for r in rows])
        per_op[op] = np.bincount(inverse, weights=values) / counts
    total_ms = np.sum(list(per_op.values()), axis=0)
    return MlpTable(path, tokens, total_ms / 1e3, per_op)


@dataclass(frozen=True)
class CollectiveTable:
    """Time of one collective (seconds) by message size (bytes), at one worker count."""

    source: Path
    size_bytes: np.ndarray  # sorted, unique
    time_s: np.ndarray

    def at(self, size_bytes: np.ndarray) -> np.ndarray:
        """Interpolated times; past the largest message, along the slope of the top quarter
        (large messages are bandwidth-bound: linear in size)."""
        out: np.ndarray = np.interp(size_bytes, self.size_bytes, self.time_s)
        top = self.size_bytes >= self.size_bytes[-1] * 3 / 4
        if top.sum() >= 2:
            slope = float(np.polyfit(self.size_bytes[top], self.time_s[top], 1)[0])
            beyond = size_bytes > self.size_bytes[-1]
            out[beyond] = self.time_s[-1] + slope * (size_bytes[beyond] - self.size_bytes[-1])
        return out


def network_roots() -> list[Path]:
    """Folders holding `<node>/all_reduce.csv`: `network/` under each `$BLOCK_PROFILES_DIR`
    folder, then Vidur's tables that ship with the package."""
    env = os.environ.get("BLOCK_PROFILES_DIR", "")
    return [*(Path(p) / "network" for p in env.split(os.pathsep) if p), data.VIDUR_NETWORK]


def find_all_reduce(gpu: str, tensor_parallel: int) -> CollectiveTable | None:
    """All-reduce timings among `tensor_parallel` GPUs of one node, or None where none were
    measured. NVLink pairs (Vidur's `<gpu>_pairwise_nvlink`, 2 and 4 GPUs) first, then a DGX
    node (`<gpu>_dgx`, up to 8)."""
    for node in (f"{gpu.lower()}_pairwise_nvlink", f"{gpu.lower()}_dgx"):
        for root in network_roots():
            path = root / node / "all_reduce.csv"
            if path.is_file():
                table = read_all_reduce(path, tensor_parallel)
                if table is not None:
                    return table
    return None


def read_all_reduce(path: Path, workers: int, stat: str = "median") -> CollectiveTable | None:
    """Rows of `workers` GPUs all in one node (ms → s), repeats of a size averaged."""
    try:
        with path.open(newline="") as f:
            rows = [
                r
                for r in csv.DictReader(f)
                if int(r["num_workers"]) == workers and int(r["devices_per_node"]) == workers
            ]
        sizes = np.array([int(r["size"]) for r in rows], dtype=np.int64)
        times = np.array([float(r[f"time_stats.all_reduce.{stat}"]) for r in rows]) / 1e3
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(f"cannot read all-reduce profile {path}: {e}") from e
    if len(rows) < 2:
        return None
    unique, inverse = np.unique(sizes, return_inverse=True)
    mean = np.bincount(inverse, weights=times) / np.bincount(inverse)
    return CollectiveTable(path, unique.astype(float), mean)


@dataclass(frozen=True)
class AttentionTable:
    """Measured attention timings (seconds per layer), as Vidur's attention.csv holds them."""

    source: Path
    # prefill: rows of (chunk_tokens, kv_tokens, seconds)
    prefill: np.ndarray
    # decode: rows of (batch_size, kv_tokens_per_seq, seconds)
    decode: np.ndarray
    # kv-cache save: rows of (num_tokens, seconds)
    kv_save: np.ndarray
    meta: dict[str, str] = field(default_factory=dict)


ATTENTION_KEYS: tuple[str, ...] = (
    "n_embd",
    "n_q_head",
    "n_kv_head",
    "block_size",
    "num_tensor_parallel_workers",
    "max_model_len",
    "batch_size",
    "prefill_chunk_size",
    "kv_cache_size",
    "is_prefill",
    "attention_backend",
)
ATTENTION_OPS: tuple[str, ...] = (
    "attn_input_reshape",
    "attn_kv_cache_save",
    "attn_prefill",
    "attn_decode",
    "attn_output_reshape",
)
STATS: tuple[str, ...] = ("min", "max", "mean", "median", "std")


def read_attention_table(path: Path, tensor_parallel: int, stat: str = "median") -> AttentionTable:
    rows = _rows_for_tp(path, tensor_parallel, "attention")

    def ms(r: dict[str, str], op: str) -> float:
        value = r.get(f"time_stats.{op}.{stat}", "")
        return float(value) / 1e3 if value not in ("", "nan") else 0.0

    prefill, decode, save = [], [], []
    for r in rows:
        is_prefill = r["is_prefill"].strip().lower() in ("true", "1")
        if is_prefill:
            chunk = int(r["prefill_chunk_size"])
            prefill.append((chunk, int(r["kv_cache_size"]), ms(r, "attn_prefill")))
            save.append((chunk, ms(r, "attn_kv_cache_save")))
        else:
            decode.append((int(r["batch_size"]), int(r["kv_cache_size"]), ms(r, "attn_decode")))
    meta_path = path.with_name("meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return AttentionTable(
        path,
        np.array(sorted(set(prefill)), dtype=float).reshape(-1, 3),
        np.array(sorted(set(decode)), dtype=float).reshape(-1, 3),
        np.array(sorted(set(save)), dtype=float).reshape(-1, 2),
        {str(k): str(v) for k, v in meta.items()},
    )


def write_csv(path: Path, header: Iterable[str], rows: Iterable[Iterable[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(list(header))
        writer.writerows(rows)
