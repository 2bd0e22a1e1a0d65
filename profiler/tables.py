"""Vidur-format profile tables: column layout, writing and reading back.

`mlp.csv` has `time_stats.<op>.{min,max,mean,median,std}` (milliseconds) for each non-attention
operator of one layer, then the model shape and the keys `num_tokens`,
`num_tensor_parallel_workers`, in the column order of the shared Vidur tables.
`attention.csv` has `time_stats.attn_*` stats then the keys Vidur's attention profiler writes; a
prefill row leaves the decode stats empty and the other way round, as Vidur's files do.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from block.errors import ConfigError

# One definition of Vidur's attention layout, shared with the simulator that reads it back.
from block.simulator.profiles import ATTENTION_KEYS, ATTENTION_OPS, STATS

MLP_OPS: tuple[str, ...] = (
    "emb",
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
MLP_KEYS: tuple[str, ...] = (
    "n_head",
    "n_kv_head",
    "n_embd",
    "n_expanded_embd",
    "vocab_size",
    "use_gated_mlp",
    "num_tokens",
    "num_tensor_parallel_workers",
)


def stat_columns(ops: Sequence[str]) -> list[str]:
    return [f"time_stats.{op}.{s}" for op in ops for s in STATS]


MLP_COLUMNS: tuple[str, ...] = (*stat_columns(MLP_OPS), *MLP_KEYS)
ATTENTION_COLUMNS: tuple[str, ...] = (*stat_columns(ATTENTION_OPS), *ATTENTION_KEYS)


@dataclass(frozen=True, slots=True)
class Stats:
    """Summary of repeated timings of one operator, milliseconds."""

    min: float
    max: float
    mean: float
    median: float
    std: float  # population standard deviation, as numpy's default (Vidur uses np.std)

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Stats:
        if not samples_ms:
            raise ValueError("no timing samples")
        if any(not math.isfinite(s) or s < 0 for s in samples_ms):
            raise ValueError(f"invalid timing samples: {list(samples_ms)}")
        return cls(
            min=min(samples_ms),
            max=max(samples_ms),
            mean=statistics.fmean(samples_ms),
            median=statistics.median(samples_ms),
            std=statistics.pstdev(samples_ms),
        )

    def values(self) -> tuple[float, ...]:
        return (self.min, self.max, self.mean, self.median, self.std)


@dataclass(frozen=True, slots=True)
class MlpRow:
    num_tokens: int
    tensor_parallel: int
    n_head: int
    n_kv_head: int
    n_embd: int
    n_expanded_embd: int
    vocab_size: int
    use_gated_mlp: bool
    ops: Mapping[str, Stats]  # every name of MLP_OPS

    def cells(self) -> list[object]:
        missing = [op for op in MLP_OPS if op not in self.ops]
        if missing:
            raise ValueError(f"MLP row for {self.num_tokens} tokens lacks {missing}")
        stats = [v for op in MLP_OPS for v in self.ops[op].values()]
        keys = [
            self.n_head,
            self.n_kv_head,
            self.n_embd,
            self.n_expanded_embd,
            self.vocab_size,
            self.use_gated_mlp,
            self.num_tokens,
            self.tensor_parallel,
        ]
        return [*stats, *keys]


@dataclass(frozen=True, slots=True)
class AttentionRow:
    n_embd: int
    n_q_head: int
    n_kv_head: int
    block_size: int
    tensor_parallel: int
    max_model_len: int
    batch_size: int
    prefill_chunk_size: int  # 0 for decode rows
    kv_cache_size: int
    is_prefill: bool
    attention_backend: str
    ops: Mapping[str, Stats]  # a subset of ATTENTION_OPS

    def cells(self) -> list[object]:
        wrong = "attn_decode" if self.is_prefill else "attn_prefill"
        if wrong in self.ops:
            raise ValueError(f"{'prefill' if self.is_prefill else 'decode'} row has {wrong}")
        stats: list[object] = []
        for op in ATTENTION_OPS:
            stats.extend(self.ops[op].values() if op in self.ops else [""] * len(STATS))
        keys = [
            self.n_embd,
            self.n_q_head,
            self.n_kv_head,
            self.block_size,
            self.tensor_parallel,
            self.max_model_len,
            self.batch_size,
            self.prefill_chunk_size,
            self.kv_cache_size,
            self.is_prefill,
            self.attention_backend,
        ]
        return [*stats, *keys]


def pool_stats(parts: Sequence[Stats]) -> Stats:
    """One summary of several equally sized samples of the same quantity."""
    means = [p.mean for p in parts]
    within = statistics.fmean(p.std**2 for p in parts)
    return Stats(
        min=min(p.min for p in parts),
        max=max(p.max for p in parts),
        mean=statistics.fmean(means),
        median=statistics.median(p.median for p in parts),
        std=math.sqrt(within + statistics.pvariance(means)),
    )


def pool_kv_save(rows: Sequence[AttentionRow]) -> list[AttentionRow]:
    """Give every row the KV-cache save time pooled over the rows that write as many tokens.

    The save copies the step's new tokens into the cache, so its time depends on their number
    (the chunk for prefill rows, the batch for decode rows), not on the KV length; each grid
    point re-measures it. Pooling those repeats makes one estimate per token count, which is
    what the latency model looks up (it keys the save by tokens only).
    """
    groups: dict[tuple[bool, int], list[Stats]] = {}
    for r in rows:
        if "attn_kv_cache_save" in r.ops:
            key = (r.is_prefill, r.prefill_chunk_size if r.is_prefill else r.batch_size)
            groups.setdefault(key, []).append(r.ops["attn_kv_cache_save"])
    pooled = {key: pool_stats(parts) for key, parts in groups.items()}
    out = []
    for r in rows:
        key = (r.is_prefill, r.prefill_chunk_size if r.is_prefill else r.batch_size)
        if key in pooled:
            r = replace(r, ops={**r.ops, "attn_kv_cache_save": pooled[key]})
        out.append(r)
    return out


def _write(path: Path, header: Sequence[str], rows: Iterable[list[object]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            count += 1
    tmp.replace(path)  # a crash mid-run never leaves a half-written table behind
    return count


def write_mlp_csv(path: Path, rows: Iterable[MlpRow]) -> int:
    """Write rows in Vidur's mlp.csv layout; returns the row count."""
    return _write(path, MLP_COLUMNS, (r.cells() for r in rows))


def write_attention_csv(path: Path, rows: Iterable[AttentionRow]) -> int:
    """Write rows in Vidur's attention.csv layout; returns the row count."""
    return _write(path, ATTENTION_COLUMNS, (r.cells() for r in rows))


def _stats(raw: Mapping[str, str], op: str) -> Stats | None:
    cells = [raw.get(f"time_stats.{op}.{s}", "") for s in STATS]
    if all(c in ("", "nan", "NaN") for c in cells):
        return None
    return Stats(*(float(c) for c in cells))


def _bool(cell: str) -> bool:
    value = cell.strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise ValueError(f"not a boolean: {cell!r}")
    return value in ("true", "1")


def _read(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError(f"{path} is not a Vidur table: missing columns {missing}")
            return list(reader)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e}") from e


def read_mlp_csv(path: Path) -> list[MlpRow]:
    """Read an mlp.csv (ours or Vidur's) back into rows."""
    rows = []
    for i, raw in enumerate(_read(path, MLP_KEYS), start=2):
        try:
            ops = {op: s for op in MLP_OPS if (s := _stats(raw, op)) is not None}
            rows.append(
                MlpRow(
                    num_tokens=int(raw["num_tokens"]),
                    tensor_parallel=int(raw["num_tensor_parallel_workers"]),
                    n_head=int(raw["n_head"]),
                    n_kv_head=int(raw["n_kv_head"]),
                    n_embd=int(raw["n_embd"]),
                    n_expanded_embd=int(raw["n_expanded_embd"]),
                    vocab_size=int(raw["vocab_size"]),
                    use_gated_mlp=_bool(raw["use_gated_mlp"]),
                    ops=ops,
                )
            )
        except ValueError as e:
            raise ConfigError(f"{path}:{i}: {e}") from e
    return rows


def read_attention_csv(path: Path) -> list[AttentionRow]:
    """Read an attention.csv back into rows."""
    rows = []
    for i, raw in enumerate(_read(path, ATTENTION_KEYS), start=2):
        try:
            ops = {op: s for op in ATTENTION_OPS if (s := _stats(raw, op)) is not None}
            rows.append(
                AttentionRow(
                    n_embd=int(raw["n_embd"]),
                    n_q_head=int(raw["n_q_head"]),
                    n_kv_head=int(raw["n_kv_head"]),
                    block_size=int(raw["block_size"]),
                    tensor_parallel=int(raw["num_tensor_parallel_workers"]),
                    max_model_len=int(raw["max_model_len"]),
                    batch_size=int(raw["batch_size"]),
                    prefill_chunk_size=int(raw["prefill_chunk_size"]),
                    kv_cache_size=int(raw["kv_cache_size"]),
                    is_prefill=_bool(raw["is_prefill"]),
                    attention_backend=raw["attention_backend"],
                    ops=ops,
                )
            )
        except ValueError as e:
            raise ConfigError(f"{path}:{i}: {e}") from e
    return rows


def write_meta(path: Path, meta: Mapping[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(meta), indent=2, sort_keys=True) + "\n")


def profile_dir(root: Path, gpu: str, model_name: str) -> Path:
    """`<root>/<gpu>/<org>/<model>`, the layout the simulator searches."""
    if not model_name or model_name.startswith("/") or ".." in model_name.split("/"):
        raise ConfigError(f"model name {model_name!r} cannot name a profile directory")
    return root / gpu.lower() / model_name
