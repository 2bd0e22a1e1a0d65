"""The points the profiler measures: token counts for the MLP table, (chunk, KV) and (batch, KV)
pairs for the attention table.

The MLP token grid is the one of the shared Vidur H100 tables (`mlp.csv` of Llama-2-7b-hf): every
count up to 4 as powers of two, then steps of 8 up to 1024, 16 up to 2048, 32 up to 4096, and
coarser beyond (unit-tested against that file). Keeping the same grid lets our tables be compared
with Vidur's row by row.

Attention has two presets. `modest` (the default) is a coarse grid that fits a few minutes of GPU
time per model; the latency model interpolates between its points. `full` is as dense as Vidur's
own attention profiler (chunk sizes from 32 to 4096, KV lengths in steps of the chunk size, every
decode batch size up to 128).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from block.errors import ConfigError

Preset = Literal["modest", "full"]
PRESETS: tuple[Preset, ...] = ("modest", "full")

# (first, last, step) segments of the token grid, inclusive at both ends. Segments share their
# end points; `num_tokens_grid` removes the duplicates.
_TOKEN_SEGMENTS: tuple[tuple[int, int, int], ...] = (
    (8, 1024, 8),
    (1024, 2048, 16),
    (2048, 4096, 32),
    (4096, 8192, 64),
    (8192, 16384, 128),
    (16384, 32768, 256),
)


def num_tokens_grid(max_tokens: int = 4096) -> list[int]:
    """Batch token counts for the MLP table, ascending, up to `max_tokens`."""
    if max_tokens < 1:
        raise ConfigError(f"max tokens must be at least 1, got {max_tokens}")
    if max_tokens > _TOKEN_SEGMENTS[-1][1]:
        raise ConfigError(f"max tokens above {_TOKEN_SEGMENTS[-1][1]} is not supported")
    points = {1, 2, 4}
    for first, last, step in _TOKEN_SEGMENTS:
        points.update(range(first, last + 1, step))
    return sorted(p for p in points if p <= max_tokens)


@dataclass(frozen=True, slots=True)
class PrefillPoint:
    """One prefilling sequence: `chunk_tokens` new tokens after `kv_tokens` cached ones."""

    chunk_tokens: int
    kv_tokens: int


@dataclass(frozen=True, slots=True)
class DecodePoint:
    """`batch_size` decoding sequences, each with `kv_tokens` cached tokens."""

    batch_size: int
    kv_tokens: int


@dataclass(frozen=True, slots=True)
class AttentionGrid:
    prefill: tuple[PrefillPoint, ...]
    decode: tuple[DecodePoint, ...]

    def __len__(self) -> int:
        return len(self.prefill) + len(self.decode)


_MODEST_CHUNKS = (32, 64, 128, 256, 512, 1024, 2048, 4096)
_MODEST_PREFILL_KV = (0, 256, 512, 768, 1024, 1536, 2048, 2560, 3072, 3584)
_MODEST_BATCHES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128)
_MODEST_DECODE_KV = (32, 64, 128, 256, 512, 768, 1024, 1536, 2048, 2560, 3072, 3584, 4096)


def _full_chunks() -> list[int]:
    return [*range(32, 129, 32), *range(256, 1025, 128), *range(1536, 8192 + 1, 512)]


def _full_decode_kv(max_seq_len: int) -> list[int]:
    kv = [*range(32, 1025, 32), *range(1088, 4097, 64), *range(4352, 65537, 256)]
    return [k for k in kv if k <= max_seq_len]


def attention_grid(
    max_seq_len: int,
    max_kv_tokens: int,
    preset: Preset = "modest",
    max_batch_size: int = 128,
    max_chunk_tokens: int = 4096,
) -> AttentionGrid:
    """Attention points for a model with context `max_seq_len`.

    `max_kv_tokens` bounds the KV cache one point may use (batch x (KV + new tokens)), so the
    grid fits the GPU memory left after the weights.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown grid preset {preset!r}; known: {', '.join(PRESETS)}")
    if max_seq_len < 32:
        raise ConfigError(f"max sequence length must be at least 32, got {max_seq_len}")
    if max_batch_size < 1 or max_kv_tokens < 1 or max_chunk_tokens < 1:
        raise ConfigError("batch size, chunk size and KV budget must be positive")
    if preset == "modest":
        chunks = [c for c in _MODEST_CHUNKS if c <= min(max_seq_len, max_chunk_tokens)]
        prefill = [
            PrefillPoint(c, kv)
            for c in chunks
            for kv in _MODEST_PREFILL_KV
            if c + kv <= max_seq_len and c + kv <= max_kv_tokens
        ]
        batches = [b for b in _MODEST_BATCHES if b <= max_batch_size]
        decode_kv = [k for k in _MODEST_DECODE_KV if k <= max_seq_len]
    else:
        chunks = [c for c in _full_chunks() if c <= min(max_seq_len, max_chunk_tokens)]
        # Like Vidur: a chunk follows whole chunks already cached.
        prefill = [
            PrefillPoint(c, kv)
            for c in chunks
            for kv in range(0, max_seq_len - c + 1, c)
            if c + kv <= max_kv_tokens
        ]
        batches = list(range(1, max_batch_size + 1))
        decode_kv = _full_decode_kv(max_seq_len)
    decode = [
        DecodePoint(b, kv) for b in batches for kv in decode_kv if b * (kv + 1) <= max_kv_tokens
    ]
    return AttentionGrid(tuple(prefill), tuple(decode))
