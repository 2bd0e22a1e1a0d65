"""The measured H100 tables committed under data/profiles: complete, readable, with provenance."""

import json
from pathlib import Path

import pytest

from block.profiler import tables

OUR_H100 = Path(__file__).resolve().parents[3] / "data/profiles/h100"


@pytest.mark.parametrize(
    "model", ["meta-llama/Llama-2-7b-hf", "meta-llama/Meta-Llama-3-8B", "Qwen/Qwen2-7B"]
)
def test_committed_h100_profiles_are_complete(model: str) -> None:
    """The measured tables in data/profiles read back, cover the grids and carry provenance."""
    d = OUR_H100 / model
    mlp = tables.read_mlp_csv(d / "mlp.csv")
    attention = tables.read_attention_csv(d / "attention.csv")
    meta = json.loads((d / "meta.json").read_text())
    assert [r.num_tokens for r in mlp] == sorted({r.num_tokens for r in mlp})
    assert mlp[0].num_tokens == 1 and mlp[-1].num_tokens == 4096
    assert all(set(r.ops) == set(tables.MLP_OPS) for r in mlp)
    assert {r.is_prefill for r in attention} == {True, False}
    assert max(r.batch_size for r in attention) == 128
    assert meta["model"]["name"] == model and "H100" in meta["gpu_name"]
    for key in ("driver_version", "torch_version", "attention_kernel", "date"):
        assert meta[key]
    # Work grows with the batch: the biggest MLP batch costs more than the smallest.
    layer = [sum(s.median for s in r.ops.values()) for r in mlp]
    assert layer[-1] > 3 * layer[0]


@pytest.mark.parametrize(
    "model", ["meta-llama/Llama-2-7b-hf", "meta-llama/Meta-Llama-3-8B", "Qwen/Qwen2-7B"]
)
def test_mixed_decode_table_covers_the_decode_grid(model: str) -> None:
    d = OUR_H100 / model
    decode = {
        (r.batch_size, r.kv_cache_size)
        for r in tables.read_attention_csv(d / "attention.csv")
        if not r.is_prefill
    }
    mixed = tables.read_attention_csv(d / "attention_mixed.csv")
    assert {(r.batch_size, r.kv_cache_size) for r in mixed} == decode
    assert all(set(r.ops) == {"attn_decode"} and not r.is_prefill for r in mixed)
    assert {r.attention_backend for r in mixed} == {"FLASH_ATTN_VARLEN_MIXED256"}


@pytest.mark.parametrize("model", ["meta-llama/Llama-2-7b-hf", "meta-llama/Meta-Llama-3-8B"])
def test_measured_step_overheads_are_present(model: str) -> None:
    data = json.loads((OUR_H100 / model / "overhead.json").read_text())
    assert 0 < data["step_overhead_ms"] < 5 and 0 <= data["per_seq_overhead_ms"] < 0.1
    parts = data["cpu_step_ms"] + data["nonlayer_gpu_step_ms"]
    assert parts == pytest.approx(data["step_overhead_ms"], abs=1e-3)
