"""Cross-check: our measured H100 MLP table against Vidur's H100 table, op by op.

    .venv/bin/python bench/h100_mlp_crosscheck.py            # Llama-2-7b-hf, TP 1
    .venv/bin/python bench/h100_mlp_crosscheck.py --out bench/results/h100_mlp_crosscheck.md

For every operator of `mlp.csv` and every token count both tables have, the ratio
ours / Vidur of the median times; prints the median ratio, the worst ratio (farthest from 1 on a
log scale, with the token count where it occurs) and the range, also split at 128 tokens (decode
batches vs prefill-sized batches), and the same for the whole layer (the sum of the per-layer
operators, embedding excluded, as the latency model sums them).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from block.profiler.tables import MLP_OPS, MlpRow, read_mlp_csv

ROOT = Path(__file__).resolve().parent.parent
OURS = ROOT / "data/profiles/h100/meta-llama/Llama-2-7b-hf/mlp.csv"
VIDUR = ROOT / "data/vidur/compute/h100/meta-llama/Llama-2-7b-hf/mlp.csv"
LAYER_OPS = [op for op in MLP_OPS if op != "emb"]


def _by_tokens(rows: Sequence[MlpRow], tp: int) -> dict[int, dict[str, float]]:
    """Median ms per op for each token count; repeated rows (Vidur has some) are averaged."""
    acc: dict[int, dict[str, list[float]]] = {}
    for r in rows:
        if r.tensor_parallel != tp:
            continue
        ops = acc.setdefault(r.num_tokens, {})
        for op, stats in r.ops.items():
            ops.setdefault(op, []).append(stats.median)
    return {n: {op: statistics.fmean(v) for op, v in ops.items()} for n, ops in acc.items()}


def _summary(name: str, ratios: list[tuple[int, float]]) -> str:
    values = [r for _, r in ratios]
    worst_n, worst = max(ratios, key=lambda nr: abs(math.log(nr[1])))
    small = [r for n, r in ratios if n <= 128]
    large = [r for n, r in ratios if n > 128]
    return (
        f"| {name} | {statistics.median(values):.3f} | {worst:.3f} @ {worst_n} | "
        f"{min(values):.3f} – {max(values):.3f} | {statistics.median(small):.3f} | "
        f"{statistics.median(large):.3f} |"
    )


def crosscheck(ours_path: Path, vidur_path: Path, tp: int = 1) -> str:
    ours = _by_tokens(read_mlp_csv(ours_path), tp)
    vidur = _by_tokens(read_mlp_csv(vidur_path), tp)
    common = sorted(set(ours) & set(vidur))
    if not common:
        raise SystemExit("the two tables share no token count")
    lines = [
        f"# H100 MLP table cross-check, TP {tp}",
        "",
        f"ours: `{ours_path.relative_to(ROOT)}`  ",
        f"Vidur: `data/vidur/compute/{vidur_path.parts[-4]}/"
        f"{vidur_path.parts[-3]}/{vidur_path.parts[-2]}/mlp.csv`  ",
        f"{len(common)} common token counts ({common[0]}–{common[-1]}); ratio = ours / Vidur of "
        "the median operator time; worst = farthest from 1 (log scale).",
        "",
        "| operator | median ratio | worst ratio @ tokens | range | median ≤128 tok | "
        "median >128 tok |",
        "|---|---|---|---|---|---|",
    ]
    for op in MLP_OPS:
        ratios = [(n, ours[n][op] / vidur[n][op]) for n in common if vidur[n].get(op, 0) > 0]
        lines.append(_summary(op, ratios))
    layer = [
        (n, sum(ours[n][op] for op in LAYER_OPS) / sum(vidur[n][op] for op in LAYER_OPS))
        for n in common
    ]
    lines.append(_summary("**layer (sum, no emb)**", layer))
    lines += ["", "Per-layer time, ms (ours / Vidur):", ""]
    for n in (1, 8, 32, 128, 512, 1024, 2048, 4096):
        if n in ours and n in vidur:
            a = sum(ours[n][op] for op in LAYER_OPS)
            b = sum(vidur[n][op] for op in LAYER_OPS)
            lines.append(f"- {n:>4} tokens: {a:.4f} / {b:.4f} = {a / b:.3f}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", type=Path, default=OURS)
    parser.add_argument("--vidur", type=Path, default=VIDUR)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    report = crosscheck(args.ours, args.vidur, args.tp)
    sys.stdout.write(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
