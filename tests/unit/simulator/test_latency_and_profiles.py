"""Latency model from the shared Vidur profiles, and the Vidur-format export round trip."""

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
