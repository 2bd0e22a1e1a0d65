"""Latency model from the Vidur profiles that ship with the package, and the Vidur-format export
round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from block.errors import ConfigError
from block.simulator import profiles
from block.simulator.export import export_profiles
from block.simulator.latency import ANALYTIC_ATTENTION, LatencyModel, TableAttention


def test_mlp_time_matches_table_at_measured_points(latency: LatencyModel) -> None:
    table = profiles.read_mlp_table(latency.mlp_source, 1)
    for tokens, seconds in zip(table.num_tokens[::40], table.layer_time_s[::40], strict=True):
        assert latency.mlp_layer_s(int(tokens)) == pytest.approx(seconds, rel=1e-9)


def test_step_time_grows_with_tokens_and_context(latency: LatencyModel) -> None:
    assert latency.batch_time_s([(512, 0)], []) < latency.batch_time_s([(1024, 0)], [])
    assert latency.batch_time_s([], [100] * 32) < latency.batch_time_s([], [2000] * 32)
    assert latency.batch_time_s([(256, 0)], []) < latency.batch_time_s([(256, 3000)], [])
    assert latency.batch_time_s([], []) == 0.0


def test_analytic_attention_is_labelled(latency: LatencyModel) -> None:
    assert latency.attention_label == ANALYTIC_ATTENTION
    assert latency.describe()["attention_model"] == ANALYTIC_ATTENTION


def test_unknown_gpu_or_model_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown GPU"):
        LatencyModel.load("tpu", "meta-llama/Llama-2-7b-hf")
    with pytest.raises(ConfigError, match="unknown model"):
        LatencyModel.load("a100", "gpt-5")


def test_export_round_trip_reproduces_attention(latency: LatencyModel, tmp_path: Path) -> None:
    mlp_path, attn_path = export_profiles(latency, tmp_path)
    assert mlp_path.read_bytes() == latency.mlp_source.read_bytes()
    table = profiles.read_attention_table(attn_path, 1)
    measured = TableAttention(table)
    analytic = latency.attention
    for chunk, kv in [(512, 0), (256, 1024), (1024, 2048)]:
        assert measured.prefill_s(chunk, kv) == pytest.approx(analytic.prefill_s(chunk, kv))
    for batch, kv in [(1, 512), (32, 1024), (128, 4032)]:
        assert measured.decode_s(batch, kv * batch) == pytest.approx(
            analytic.decode_s(batch, kv * batch)
        )
    reloaded = LatencyModel.load("a100", latency.model, attention=str(attn_path))
    assert reloaded.attention_label.startswith("measured:")
    assert reloaded.batch_time_s([(300, 0)], [700] * 10) == pytest.approx(
        latency.batch_time_s([(300, 0)], [700] * 10), rel=0.02
    )
    header = attn_path.read_text().splitlines()[0].split(",")
    for key in profiles.ATTENTION_KEYS:
        assert key in header


def test_vidur_compat_rounds_tokens_to_eight(latency: LatencyModel) -> None:
    compat = LatencyModel.load("a100", latency.model, compat="vidur")
    # 1 to 8 tokens all cost the same in Vidur's model: it looks ops up at ceil(n/8)*8.
    times = {round(compat.step_time_s(n, 0, 0), 12) for n in range(1, 9)}
    assert len(times) == 1
    assert np.isfinite(next(iter(times)))
    assert compat.step_time_s(9, 0, 0) > compat.step_time_s(8, 0, 0)


def test_tensor_parallel_layers_pay_two_all_reduces() -> None:
    model = LatencyModel.load("a100", "meta-llama/Llama-2-70b-hf", tensor_parallel=2)
    source = model.describe()["all_reduce_profile"]
    assert source is not None and source.endswith("a100_pairwise_nvlink/all_reduce.csv")
    shard = profiles.read_mlp_table(model.mlp_source, 2)
    reduce = profiles.find_all_reduce("a100", 2)
    assert reduce is not None
    for tokens in (1, 64, 512, 2048):
        i = int(np.searchsorted(shard.num_tokens, tokens))
        assert shard.num_tokens[i] == tokens  # a measured point: no interpolation in the shard
        message = np.array([tokens * 8192 * 2.0])  # tokens x hidden x bf16 bytes
        expected = shard.layer_time_s[i] + 2 * reduce.at(message)[0]
        assert model.mlp_layer_s(tokens) == pytest.approx(expected, rel=1e-9)
    # Large messages are bandwidth-bound: the reduce grows with the batch, beyond the table too.
    big = reduce.at(np.array([1e8, 1e9, 4e9]))
    assert big[0] < big[1] < big[2]
    # One GPU has no collective at all.
    assert (
        LatencyModel.load("a100", "meta-llama/Llama-2-70b-hf").describe()["all_reduce_profile"]
        is None
    )


def test_tensor_parallel_without_network_table_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from block import data

    # As if only the compute tables had been installed: no collective timings anywhere.
    monkeypatch.setattr(data, "VIDUR_NETWORK", tmp_path)
    assert profiles.find_all_reduce("a100", 2) is None
    with pytest.raises(ConfigError, match=r"no all_reduce\.csv for 2 x a100"):
        LatencyModel.load("a100", "meta-llama/Llama-2-70b-hf", tensor_parallel=2)
    # A user's own table under BLOCK_PROFILES_DIR/network/ is found.
    node = tmp_path / "mine" / "network" / "a100_dgx"
    node.mkdir(parents=True)
    (node / "all_reduce.csv").write_text(
        "time_stats.all_reduce.median,num_workers,devices_per_node,size\n"
        "0.01,2,2,2048\n0.5,2,2,100000000\n"
    )
    monkeypatch.setenv("BLOCK_PROFILES_DIR", str(tmp_path / "mine"))
    model = LatencyModel.load("a100", "meta-llama/Llama-2-70b-hf", tensor_parallel=2)
    assert str(model.describe()["all_reduce_profile"]).startswith(str(node))


def test_tables_without_the_tensor_parallel_degree_are_passed_over() -> None:
    # The project's H100 tables are TP 1 only; Vidur's H100 Llama-2-7B table has TP 2.
    one = LatencyModel.load("h100", "meta-llama/Llama-2-7b-hf")
    two = LatencyModel.load("h100", "meta-llama/Llama-2-7b-hf", tensor_parallel=2)
    assert "/data/profiles/h100/" in str(one.mlp_source)
    assert "/vidur/compute/h100/" in str(two.mlp_source)
    assert two.attention_label == ANALYTIC_ATTENTION  # the measured attention is TP 1 only
    with pytest.raises(ConfigError, match="with rows for tensor parallel 3"):
        LatencyModel.load("h100", "meta-llama/Llama-2-7b-hf", tensor_parallel=3)
