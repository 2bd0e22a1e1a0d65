"""Write the tables the simulator uses in Vidur's CSV format, so another simulator (Vidur
itself) can be fed identical inputs. The attention grid is the one Vidur's profiler measures."""

from __future__ import annotations

import shutil
from pathlib import Path

from block.simulator import profiles
from block.simulator.latency import LatencyModel


def vidur_attention_grid(
    max_len: int = 4096, max_batch: int = 128
) -> dict[str, list[tuple[int, int, int]]]:
    """(batch_size, prefill_chunk_size, kv_cache_size) rows of Vidur's attention profile."""
    prefill: set[tuple[int, int, int]] = set()
    chunks = [32, 64, 96, 128, *range(256, 1024 + 1, 128), *range(1024, max_len + 1, 512)]
    for c in chunks:
        for kv in range(0, max_len - c + 1, c):
            if c + kv <= max_len:
                prefill.add((1, c, kv))
    for length in [*range(32, 1024 + 1, 32), *range(1088, max_len, 64)]:
        prefill.add((1, length, 0))
    kvs = [*range(32, 1024 + 1, 32), *range(1088, max_len, 64)]
    decode = {(b, 0, kv) for b in range(1, max_batch + 1) for kv in kvs}
    return {"prefill": sorted(prefill), "decode": sorted(decode)}


def export_profiles(lat: LatencyModel, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    mlp_dst = out / "mlp.csv"
    shutil.copyfile(lat.mlp_source, mlp_dst)
    m, tp = lat.model, lat.tensor_parallel
    keys = [m.hidden_size, m.num_heads // tp, max(1, m.num_kv_heads // tp), 16, tp, m.max_model_len]
    header = [f"time_stats.{op}.{s}" for op in profiles.ATTENTION_OPS for s in profiles.STATS]
    header += list(profiles.ATTENTION_KEYS)
    grid = vidur_attention_grid(min(m.max_model_len, 4096))
    attn = lat.attention
    rows: list[list[object]] = []

    def stat_block(ms: float | None) -> list[object]:
        return ["", "", "", "", ""] if ms is None else [ms, ms, ms, ms, 0.0]

    for b, c, kv in grid["prefill"]:
        save = attn.kv_save_s(c) * 1e3
        pre = attn.prefill_s(c, kv) * 1e3
        rows.append(
            stat_block(0.0) + stat_block(save) + stat_block(pre) + stat_block(None)
            + stat_block(0.0) + [*keys, b, c, kv, True, lat.attention_label]
        )  # fmt: skip
    for b, _, kv in grid["decode"]:
        save = attn.kv_save_s(b) * 1e3
        dec = attn.decode_s(b, kv * b) * 1e3
        rows.append(
            stat_block(0.0) + stat_block(save) + stat_block(None) + stat_block(dec)
            + stat_block(0.0) + [*keys, b, 0, kv, False, lat.attention_label]
        )  # fmt: skip
    attn_dst = out / "attention.csv"
    profiles.write_csv(attn_dst, header, rows)
    return [mlp_dst, attn_dst]
