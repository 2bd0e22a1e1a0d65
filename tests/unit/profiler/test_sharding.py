"""Tensor-parallel shards by shape."""

import pytest

from block.errors import ConfigError
from block.profiler.sharding import shard
from block.simulator.models import get_model


def test_tp1_is_the_whole_model() -> None:
    m = get_model("meta-llama/Meta-Llama-3-8B")
    w = shard(m, 1)
    assert (w.q_heads, w.kv_heads, w.head_dim) == (32, 8, 128)
    assert w.qkv_size == (32 + 2 * 8) * 128
    assert w.up_proj_size == 2 * 14336
    assert w.kv_bytes_per_token() == 2 * 8 * 128 * 2


def test_heads_and_mlp_split_kv_heads_replicate() -> None:
    m = get_model("meta-llama/Llama-2-70b-hf")  # 64 heads, 8 KV heads
    w4, w16 = shard(m, 4), shard(m, 16)
    assert (w4.q_heads, w4.kv_heads, w4.intermediate_size) == (16, 2, 28672 // 4)
    assert w16.kv_heads == 1  # fewer KV heads than workers: each worker keeps one
    assert w4.hidden_size == m.hidden_size


def test_ungated_mlp_has_single_up_projection() -> None:
    w = shard(get_model("microsoft/phi-2"), 2)
    assert w.up_proj_size == w.intermediate_size == 10240 // 2


@pytest.mark.parametrize("tp", [0, 3])
def test_uneven_split_is_a_clear_error(tp: int) -> None:
    with pytest.raises(ConfigError):
        shard(get_model("meta-llama/Llama-2-7b-hf"), tp)
