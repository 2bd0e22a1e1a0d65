"""Vidur-format tables: exact column layout, write/read round trip, loading into the simulator."""

import csv
from dataclasses import replace
from pathlib import Path

import pytest

from block import data
from block.errors import ConfigError
from block.profiler import tables
from block.profiler.tables import AttentionRow, MlpRow, Stats

VIDUR_H100_LLAMA2 = data.VIDUR_COMPUTE / "h100/meta-llama/Llama-2-7b-hf"


def _stats(base: float) -> Stats:
    return Stats.of([base, base * 1.1, base * 0.95, base * 1.02])


def _mlp_row(tokens: int) -> MlpRow:
    return MlpRow(
        num_tokens=tokens,
        tensor_parallel=1,
        n_head=32,
        n_kv_head=8,
        n_embd=4096,
        n_expanded_embd=14336,
        vocab_size=128256,
        use_gated_mlp=True,
        ops={op: _stats(0.001 * tokens * (i + 1)) for i, op in enumerate(tables.MLP_OPS)},
    )


def _attention_rows() -> list[AttentionRow]:
    common = {
        "n_embd": 4096,
        "n_q_head": 32,
        "n_kv_head": 8,
        "block_size": 16,
        "tensor_parallel": 1,
        "max_model_len": 4096,
        "attention_backend": "FLASH_ATTN_VARLEN",
    }
    shared = {op: _stats(0.002) for op in ("attn_input_reshape", "attn_kv_cache_save")}
    shared["attn_output_reshape"] = _stats(0.001)
    return [
        AttentionRow(
            batch_size=1,
            prefill_chunk_size=512,
            kv_cache_size=1024,
            is_prefill=True,
            ops={**shared, "attn_prefill": _stats(0.09)},
            **common,  # type: ignore[arg-type]
        ),
        AttentionRow(
            batch_size=64,
            prefill_chunk_size=0,
            kv_cache_size=2048,
            is_prefill=False,
            ops={**shared, "attn_decode": _stats(0.7)},
            **common,  # type: ignore[arg-type]
        ),
    ]


def test_stats_match_numpy_conventions() -> None:
    s = Stats.of([1.0, 2.0, 3.0, 10.0])
    assert (s.min, s.max, s.mean, s.median) == (1.0, 10.0, 4.0, 2.5)
    assert s.std == pytest.approx(3.5355, abs=1e-4)  # population std, as np.std
    with pytest.raises(ValueError):
        Stats.of([])
    with pytest.raises(ValueError):
        Stats.of([1.0, float("nan")])


def test_mlp_header_is_exactly_vidurs() -> None:
    with (VIDUR_H100_LLAMA2 / "mlp.csv").open(newline="") as f:
        assert tuple(next(csv.reader(f))) == tables.MLP_COLUMNS


def test_mlp_round_trip(tmp_path: Path) -> None:
    rows = [_mlp_row(n) for n in (1, 8, 512)]
    path = tmp_path / "h100/org/model/mlp.csv"
    assert tables.write_mlp_csv(path, rows) == 3
    back = tables.read_mlp_csv(path)
    assert back == rows
    assert not path.with_name("mlp.csv.tmp").exists()


def test_mlp_row_missing_an_operator_is_refused(tmp_path: Path) -> None:
    row = _mlp_row(4)
    broken = MlpRow(**{**{f: getattr(row, f) for f in row.__dataclass_fields__}, "ops": {}})
    with pytest.raises(ValueError, match="lacks"):
        tables.write_mlp_csv(tmp_path / "mlp.csv", [broken])


def test_reads_the_shared_vidur_table() -> None:
    rows = tables.read_mlp_csv(VIDUR_H100_LLAMA2 / "mlp.csv")
    assert {r.tensor_parallel for r in rows} == {1, 2, 4, 8}
    one = next(r for r in rows if r.num_tokens == 4096 and r.tensor_parallel == 1)
    assert set(one.ops) == set(tables.MLP_OPS)
    assert 0.1 < one.ops["mlp_up_proj"].median < 10.0  # milliseconds


def test_attention_round_trip_leaves_the_other_phase_empty(tmp_path: Path) -> None:
    rows = _attention_rows()
    path = tmp_path / "attention.csv"
    tables.write_attention_csv(path, rows)
    with path.open(newline="") as f:
        raw = list(csv.DictReader(f))
    assert tuple(raw[0]) == tables.ATTENTION_COLUMNS
    assert raw[0]["time_stats.attn_decode.median"] == ""
    assert raw[1]["time_stats.attn_prefill.median"] == ""
    assert raw[0]["is_prefill"] == "True" and raw[1]["is_prefill"] == "False"
    assert tables.read_attention_csv(path) == rows


def test_kv_save_is_pooled_per_token_count() -> None:
    base = _attention_rows()[0]
    rows = [
        replace(base, kv_cache_size=kv, ops={**base.ops, "attn_kv_cache_save": _stats(t)})
        for kv, t in ((0, 0.010), (1024, 0.012), (2048, 0.020))
    ]
    other_chunk = replace(base, prefill_chunk_size=64)
    pooled = tables.pool_kv_save([*rows, other_chunk])
    saves = {r.ops["attn_kv_cache_save"] for r in pooled[:3]}
    assert len(saves) == 1  # one estimate for the 512-token chunk
    (save,) = saves
    assert save.min == rows[0].ops["attn_kv_cache_save"].min
    assert save.median == pytest.approx(_stats(0.012).median)
    assert save.std > max(r.ops["attn_kv_cache_save"].std for r in rows)  # spread across points
    assert pooled[3].ops == other_chunk.ops  # a different token count keeps its own
    assert [r.ops["attn_prefill"] for r in pooled[:3]] == [r.ops["attn_prefill"] for r in rows]


def test_row_with_the_wrong_phase_is_refused(tmp_path: Path) -> None:
    prefill = _attention_rows()[0]
    bad = AttentionRow(
        **{
            **{f: getattr(prefill, f) for f in prefill.__dataclass_fields__},
            "ops": {"attn_decode": _stats(1.0)},
        }
    )
    with pytest.raises(ValueError):
        tables.write_attention_csv(tmp_path / "a.csv", [bad])


def test_not_a_vidur_table_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "mlp.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="missing columns"):
        tables.read_mlp_csv(path)
    with pytest.raises(ConfigError):
        tables.read_attention_csv(tmp_path / "absent.csv")


def test_profile_dir_layout_and_bad_names(tmp_path: Path) -> None:
    assert tables.profile_dir(tmp_path, "H100", "meta-llama/Llama-2-7b-hf") == (
        tmp_path / "h100/meta-llama/Llama-2-7b-hf"
    )
    for bad in ("", "/etc", "org/../../x"):
        with pytest.raises(ConfigError):
            tables.profile_dir(tmp_path, "h100", bad)


def test_written_tables_load_into_the_simulator(tmp_path: Path) -> None:
    profiles = pytest.importorskip("block.simulator.profiles")
    mlp_path, attn_path = tmp_path / "mlp.csv", tmp_path / "attention.csv"
    tables.write_mlp_csv(mlp_path, [_mlp_row(n) for n in (1, 8, 512)])
    tables.write_attention_csv(attn_path, _attention_rows())
    mlp = profiles.read_mlp_table(mlp_path, 1)
    assert list(mlp.num_tokens) == [1, 8, 512]
    layer_ms = sum(_mlp_row(8).ops[op].median for op in profiles.MLP_LAYER_OPS)
    assert mlp.layer_time_s[1] == pytest.approx(layer_ms / 1e3)
    attention = profiles.read_attention_table(attn_path, 1)
    assert attention.prefill.tolist() == [[512, 1024, pytest.approx(_stats(0.09).median / 1e3)]]
    assert attention.decode.tolist() == [[64, 2048, pytest.approx(_stats(0.7).median / 1e3)]]
