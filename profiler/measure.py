"""Measure one layer's operators on the GPU for one tensor-parallel shard.

Needs torch (the `gpu` extra). Weights are random bf16 (never zeros: they can run faster than real
data), laid out as serving engines hold them: one fused QKV projection, one fused gate+up
projection, so `attn_pre_proj` and `mlp_up_proj` mean what they mean in Vidur's tables.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from block.profiler.grids import AttentionGrid
from block.profiler.ops import FusedOps, VarlenAttention, rope_cache
from block.profiler.sharding import WorkerShape
from block.profiler.tables import AttentionRow, MlpRow, Stats
from block.profiler.timing import Timer

logger = logging.getLogger(__name__)

Tensor = Any
BF16 = torch.bfloat16
RMS_EPS = 1e-5


def _randn(*shape: int, scale: float = 1.0) -> Tensor:
    return torch.randn(*shape, device="cuda", dtype=BF16) * scale


@dataclass(frozen=True)
class _LayerWeights:
    """One layer's weights on one worker, random bf16, in serving-engine layout."""

    emb: Tensor
    norm: Tensor
    qkv: Tensor
    o: Tensor
    up: Tensor  # fused gate+up when the MLP is gated
    down: Tensor
    cos: Tensor
    sin: Tensor

    @classmethod
    def random(cls, worker: WorkerShape, max_tokens: int) -> _LayerWeights:
        h = worker.hidden_size
        cos, sin = rope_cache(max_tokens, worker.head_dim)
        return cls(
            emb=_randn(worker.vocab_rows, h, scale=0.02),
            norm=_randn(h),
            qkv=_randn(worker.qkv_size, h, scale=0.02),
            o=_randn(h, worker.q_size, scale=0.02),
            up=_randn(worker.up_proj_size, h, scale=0.02),
            down=_randn(h, worker.intermediate_size, scale=0.02),
            cos=cos,
            sin=sin,
        )


def _mlp_point(
    worker: WorkerShape, w: _LayerWeights, n: int, ops: FusedOps, timer: Timer
) -> dict[str, Stats]:
    """Time each non-attention operator on a batch of `n` tokens (fresh random inputs)."""
    h = worker.hidden_size
    x, residual = _randn(n, h), _randn(n, h)
    ids = torch.randint(0, worker.vocab_rows, (n,), device="cuda")
    # q/k as transformers' Llama lays them out: (1, heads, tokens, head_dim) views.
    q = _randn(1, n, worker.q_size).view(1, n, worker.q_heads, -1).transpose(1, 2)
    k = _randn(1, n, worker.kv_size).view(1, n, worker.kv_heads, -1).transpose(1, 2)
    cos, sin = w.cos[:n].unsqueeze(0), w.sin[:n].unsqueeze(0)
    attn_out = _randn(n, worker.q_size)
    gate, up = _randn(n, worker.intermediate_size), _randn(n, worker.intermediate_size)
    up_out = _randn(n, worker.up_proj_size)
    act_out = _randn(n, worker.intermediate_size)

    def act() -> object:
        if worker.model.use_gated_mlp:
            return ops.silu_mul(gate, up)
        return F.gelu(up_out)

    return {
        "emb": timer.time(lambda: F.embedding(ids, w.emb)),
        "input_layernorm": timer.time(lambda: ops.rms_norm(x, w.norm, RMS_EPS)),
        "attn_pre_proj": timer.time(lambda: F.linear(x, w.qkv)),
        "attn_rope": timer.time(lambda: ops.rope(q, k, cos, sin)),
        "attn_post_proj": timer.time(lambda: F.linear(attn_out, w.o)),
        "post_attention_layernorm": timer.time(lambda: ops.rms_norm(x, w.norm, RMS_EPS)),
        "mlp_up_proj": timer.time(lambda: F.linear(x, w.up)),
        "mlp_act": timer.time(act),
        "mlp_down_proj": timer.time(lambda: F.linear(act_out, w.down)),
        "add": timer.time(lambda: residual + x),
    }


def profile_mlp(
    worker: WorkerShape, tokens: Sequence[int], ops: FusedOps, timer: Timer
) -> list[MlpRow]:
    """Time every non-attention operator of one layer at each batch token count."""
    m = worker.model
    weights = _LayerWeights.random(worker, max(tokens))
    rows = []
    with torch.inference_mode():
        for n in tokens:
            measured = _mlp_point(worker, weights, n, ops, timer)
            rows.append(
                MlpRow(
                    num_tokens=n,
                    tensor_parallel=worker.tensor_parallel,
                    n_head=m.num_heads,
                    n_kv_head=m.num_kv_heads,
                    n_embd=m.hidden_size,
                    n_expanded_embd=m.intermediate_size,
                    vocab_size=m.vocab_size,
                    use_gated_mlp=m.use_gated_mlp,
                    ops=measured,
                )
            )
            if n in (1, 256, 1024, 4096) or n == tokens[-1]:
                logger.info(
                    "mlp tp=%d tokens=%d layer=%.3f ms",
                    worker.tensor_parallel,
                    n,
                    sum(s.median for s in measured.values()),
                )
    return rows


class _KvCache:
    """One layer's K and V for `capacity` tokens, random-filled, sequences packed end to end."""

    def __init__(self, worker: WorkerShape, capacity: int) -> None:
        self.k = _randn(capacity, worker.kv_heads, worker.head_dim)
        self.v = _randn(capacity, worker.kv_heads, worker.head_dim)


def _i32(values: Sequence[int]) -> Tensor:
    return torch.tensor(list(values), device="cuda", dtype=torch.int32)


@dataclass(frozen=True)
class _VarlenBatch:
    """One packed attention batch: inputs in transformers' layout plus varlen metadata."""

    q4: Tensor  # (1, q_heads, tokens, dim)
    k4: Tensor
    v4: Tensor
    cu_q: Tensor
    cu_k: Tensor
    slots: Tensor  # KV-cache rows the new tokens go to
    max_q: int
    max_k: int
    total_k: int


def _batch(worker: WorkerShape, new_tokens: Sequence[int], cached: Sequence[int]) -> _VarlenBatch:
    hq, hkv, d = worker.q_heads, worker.kv_heads, worker.head_dim
    n = sum(new_tokens)
    cu_q, cu_k = [0], [0]
    slots: list[int] = []
    for new, before in zip(new_tokens, cached, strict=True):
        start = cu_k[-1]
        slots.extend(range(start + before, start + before + new))
        cu_q.append(cu_q[-1] + new)
        cu_k.append(start + before + new)
    return _VarlenBatch(
        q4=_randn(1, hq, n, d),
        k4=_randn(1, hkv, n, d),
        v4=_randn(1, hkv, n, d),
        cu_q=_i32(cu_q),
        cu_k=_i32(cu_k),
        slots=torch.tensor(slots, device="cuda"),
        max_q=max(new_tokens),
        max_k=max(new + before for new, before in zip(new_tokens, cached, strict=True)),
        total_k=cu_k[-1],
    )


def _time_attention(
    worker: WorkerShape,
    cache: _KvCache,
    attn: VarlenAttention,
    timer: Timer,
    new_tokens: Sequence[int],
    cached_tokens: Sequence[int],
    attention_only: bool = False,
) -> dict[str, Stats]:
    """Time input reshape, KV save, attention and output reshape for one varlen batch."""
    b = _batch(worker, new_tokens, cached_tokens)
    n = sum(new_tokens)
    k_all, v_all = cache.k[: b.total_k], cache.v[: b.total_k]

    def reshape_in() -> tuple[Tensor, ...]:
        # (1, heads, tokens, dim) -> (tokens, heads, dim): a view when the kernel takes strides.
        return tuple(attn.prepare(t[0].transpose(0, 1)) for t in (b.q4, b.k4, b.v4))

    q, k, v = reshape_in()
    scale = worker.head_dim**-0.5

    def attend() -> Tensor:
        return attn(q, k_all, v_all, b.cu_q, b.cu_k, b.max_q, b.max_k, scale)

    name = "attn_prefill" if b.max_q > 1 else "attn_decode"
    if attention_only:
        return {name: timer.time(attend)}
    out = attend()

    def save() -> None:
        cache.k.index_copy_(0, b.slots, k)
        cache.v.index_copy_(0, b.slots, v)

    return {
        "attn_input_reshape": timer.time(reshape_in),
        "attn_kv_cache_save": timer.time(save),
        name: timer.time(attend),
        "attn_output_reshape": timer.time(lambda: out.reshape(1, n, -1).contiguous()),
    }


def profile_attention(
    worker: WorkerShape,
    grid: AttentionGrid,
    attn: VarlenAttention,
    timer: Timer,
    max_model_len: int,
    block_size: int,
    kv_capacity: int,
) -> list[AttentionRow]:
    """Time prefill chunks (batch 1) and uniform decode batches over the grid."""
    cache = _KvCache(worker, kv_capacity)
    m = worker.model
    rows = []

    def row(batch: int, chunk: int, kv: int, stats: dict[str, Stats]) -> AttentionRow:
        return AttentionRow(
            n_embd=m.hidden_size,
            n_q_head=m.num_heads,
            n_kv_head=m.num_kv_heads,
            block_size=block_size,
            tensor_parallel=worker.tensor_parallel,
            max_model_len=max_model_len,
            batch_size=batch,
            prefill_chunk_size=chunk,
            kv_cache_size=kv,
            is_prefill=chunk > 0,
            attention_backend="FLASH_ATTN_VARLEN",
            ops=stats,
        )

    with torch.inference_mode():
        for p in grid.prefill:
            stats = _time_attention(worker, cache, attn, timer, [p.chunk_tokens], [p.kv_tokens])
            rows.append(row(1, p.chunk_tokens, p.kv_tokens, stats))
        logger.info("attention tp=%d: %d prefill points", worker.tensor_parallel, len(grid.prefill))
        for dp in grid.decode:
            stats = _time_attention(
                worker, cache, attn, timer, [1] * dp.batch_size, [dp.kv_tokens] * dp.batch_size
            )
            rows.append(row(dp.batch_size, 0, dp.kv_tokens, stats))
        logger.info("attention tp=%d: %d decode points", worker.tensor_parallel, len(grid.decode))
    return rows


MIXED_CHUNK_TOKENS = 256


def profile_mixed_decode(
    worker: WorkerShape,
    grid: AttentionGrid,
    attn: VarlenAttention,
    timer: Timer,
    max_model_len: int,
    block_size: int,
    kv_capacity: int,
    chunk_tokens: int = MIXED_CHUNK_TOKENS,
) -> list[AttentionRow]:
    """Decode attention inside a mixed launch: each decode point of the grid packed with one
    prefill chunk of `chunk_tokens` (no cached prefix) into one varlen call, minus the chunk's
    time alone.

    Why a table of its own: a decode-only varlen call (every query length 1) lets FlashAttention
    fold a KV head's query heads together (grouped-query attention reads each K/V once), while in
    a call that also holds a prefill chunk every query head reads K/V itself; for Llama-3-8B (four
    query heads per KV head) decodes in mixed steps measured several times their decode-only
    time. Rows are decode rows of Vidur's attention format, backend
    `FLASH_ATTN_VARLEN_MIXED<chunk>`, `attn_decode` holding the decodes' share of the call.
    """
    cache = _KvCache(worker, kv_capacity)
    m = worker.model
    rows = []
    with torch.inference_mode():
        alone = _time_attention(worker, cache, attn, timer, [chunk_tokens], [0], True)
        base_ms = alone["attn_prefill"].median
        for dp in grid.decode:
            if dp.batch_size * (dp.kv_tokens + 1) + chunk_tokens > kv_capacity:
                continue
            both = _time_attention(
                worker,
                cache,
                attn,
                timer,
                [chunk_tokens] + [1] * dp.batch_size,
                [0] + [dp.kv_tokens] * dp.batch_size,
                True,
            )["attn_prefill"]
            share = Stats(
                min=max(0.0, both.min - base_ms),
                max=max(0.0, both.max - base_ms),
                mean=max(0.0, both.mean - base_ms),
                median=max(0.0, both.median - base_ms),
                std=both.std,
            )
            rows.append(
                AttentionRow(
                    n_embd=m.hidden_size,
                    n_q_head=m.num_heads,
                    n_kv_head=m.num_kv_heads,
                    block_size=block_size,
                    tensor_parallel=worker.tensor_parallel,
                    max_model_len=max_model_len,
                    batch_size=dp.batch_size,
                    prefill_chunk_size=0,
                    kv_cache_size=dp.kv_tokens,
                    is_prefill=False,
                    attention_backend=f"FLASH_ATTN_VARLEN_MIXED{chunk_tokens}",
                    ops={"attn_decode": share},
                )
            )
    logger.info("attention tp=%d: %d mixed decode points", worker.tensor_parallel, len(rows))
    return rows
