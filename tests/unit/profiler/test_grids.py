"""Profiler grids: the MLP token grid is Vidur's, attention grids respect context and memory."""

import csv
import itertools

import pytest

from block import data
from block.errors import ConfigError
from block.profiler import grids

VIDUR_H100_LLAMA2 = data.VIDUR_COMPUTE / "h100/meta-llama/Llama-2-7b-hf/mlp.csv"


def test_token_grid_is_the_vidur_h100_grid() -> None:
    with VIDUR_H100_LLAMA2.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for tp in {r["num_tensor_parallel_workers"] for r in rows}:
        measured = {int(r["num_tokens"]) for r in rows if r["num_tensor_parallel_workers"] == tp}
        assert grids.num_tokens_grid(max(measured)) == sorted(measured)


def test_token_grid_is_sorted_unique_and_capped() -> None:
    grid = grids.num_tokens_grid(1000)
    assert grid == sorted(set(grid))
    assert grid[:5] == [1, 2, 4, 8, 16]
    assert grid[-1] == 1000
    big = grids.num_tokens_grid(8192)
    assert all(0 < b - a <= 64 for a, b in itertools.pairwise(big))


@pytest.mark.parametrize("bad", [0, -5, 10**6])
def test_token_grid_rejects_impossible_sizes(bad: int) -> None:
    with pytest.raises(ConfigError):
        grids.num_tokens_grid(bad)


def test_modest_attention_grid_fits_context_and_budget() -> None:
    grid = grids.attention_grid(max_seq_len=2048, max_kv_tokens=40_000)
    assert grid.prefill and grid.decode
    assert all(p.chunk_tokens + p.kv_tokens <= 2048 for p in grid.prefill)
    assert all(d.kv_tokens <= 2048 for d in grid.decode)
    assert all(d.batch_size * (d.kv_tokens + 1) <= 40_000 for d in grid.decode)
    assert {p.kv_tokens for p in grid.prefill} >= {0, 1024}  # full and chunked prefills
    assert max(d.batch_size for d in grid.decode) == 128
    assert len(grid) == len(grid.prefill) + len(grid.decode)


def test_full_grid_is_denser_and_chunks_follow_whole_chunks() -> None:
    modest = grids.attention_grid(4096, 10**7)
    full = grids.attention_grid(4096, 10**7, preset="full")
    assert len(full) > 4 * len(modest)
    assert all(p.kv_tokens % p.chunk_tokens == 0 for p in full.prefill)
    assert sorted({d.batch_size for d in full.decode}) == list(range(1, 129))


def test_attention_grid_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        grids.attention_grid(16, 1000)
    with pytest.raises(ConfigError):
        grids.attention_grid(4096, 1000, preset="huge")  # type: ignore[arg-type]
