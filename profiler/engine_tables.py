"""Vidur-format tables from a fitted step model (pure: no I/O but the writers it is handed).

`block profile engine` measures whole engine steps from outside, so what it learns is the step
model of `block.simulator.calibration` (a constant, per-token, per-sequence, per-decode-KV-token
and per-prefill-pair cost). The simulator reads profiles as per-layer tables, so the model is
written as tables that reproduce it exactly where it is linear and to within the grid's
interpolation where it is not (the prefill pairs are quadratic in the chunk):

- `mlp.csv`: per-layer non-attention time = per_token_s x tokens / layers (all of it in the
  `mlp_up_proj` column, every other operator 0: a black box has no operators);
- `attention.csv`: decode rows per_decode_kv_token_s x KV / layers, prefill rows
  (per_prefill_pair_s x pairs + per_prefill_chunk_s) / layers, no KV-cache save;
- `overhead.json`: the constant and the per-sequence cost as the step and per-sequence overheads.
"""

from __future__ import annotations

from block.profiler.tables import MLP_OPS, AttentionRow, MlpRow, Stats
from block.simulator.calibration import Coefficients
from block.simulator.latency import prefill_pairs
from block.simulator.models import ModelShape

BACKEND = "engine-black-box"


def _stats(ms: float) -> Stats:
    return Stats(ms, ms, ms, ms, 0.0)


def token_grid(max_tokens: int) -> list[int]:
    grid = {1, 2, 4, 8, 16, 32, 64, *range(128, max_tokens + 1, 128), max_tokens}
    return sorted(n for n in grid if n <= max_tokens)


def mlp_rows(shape: ModelShape, c: Coefficients, max_tokens: int) -> list[MlpRow]:
    layers = shape.num_layers
    zero = _stats(0.0)
    rows = []
    for n in token_grid(max_tokens):
        ops = {op: zero for op in MLP_OPS}
        ops["mlp_up_proj"] = _stats(max(0.0, c.per_token_s * n / layers) * 1e3)
        rows.append(
            MlpRow(
                num_tokens=n,
                tensor_parallel=1,
                n_head=shape.num_heads,
                n_kv_head=shape.num_kv_heads,
                n_embd=shape.hidden_size,
                n_expanded_embd=shape.intermediate_size,
                vocab_size=shape.vocab_size,
                use_gated_mlp=shape.use_gated_mlp,
                ops=ops,
            )
        )
    return rows


def attention_rows(
    shape: ModelShape, c: Coefficients, block_size: int, max_batch: int, max_chunk: int
) -> list[AttentionRow]:
    layers = shape.num_layers
    max_len = shape.max_model_len
    kvs = sorted({*range(0, max_len + 1, 256), max_len})
    zero = _stats(0.0)

    def row(batch: int, chunk: int, kv: int, prefill: bool, op: str, ms: float) -> AttentionRow:
        return AttentionRow(
            n_embd=shape.hidden_size,
            n_q_head=shape.num_heads,
            n_kv_head=shape.num_kv_heads,
            block_size=block_size,
            tensor_parallel=1,
            max_model_len=max_len,
            batch_size=batch,
            prefill_chunk_size=chunk,
            kv_cache_size=kv,
            is_prefill=prefill,
            attention_backend=BACKEND,
            ops={
                "attn_input_reshape": zero,
                "attn_kv_cache_save": zero,
                op: _stats(max(0.0, ms)),
                "attn_output_reshape": zero,
            },
        )

    out = []
    # Prefill is quadratic in the chunk: a dense chunk grid keeps interpolation error small.
    chunks = sorted({*range(16, max_chunk + 1, 16), 1, 2, 4, 8, max_chunk})
    for chunk in chunks:
        for kv in kvs:
            if kv + chunk > max_len:
                continue
            pairs = prefill_pairs(chunk, kv)
            ms = (c.per_prefill_pair_s * pairs + c.per_prefill_chunk_s) / layers * 1e3
            out.append(row(1, chunk, kv, True, "attn_prefill", ms))
    batches = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch})
    for batch in batches:
        for kv in kvs:
            ms = c.per_decode_kv_token_s * batch * kv / layers * 1e3
            out.append(row(batch, 0, kv, False, "attn_decode", ms))
    return out


def overheads(c: Coefficients) -> dict[str, float]:
    return {
        "step_overhead_ms": max(0.0, c.constant_s) * 1e3,
        "per_seq_overhead_ms": max(0.0, c.per_sequence_s) * 1e3,
    }
