"""`block demo`: the README's main job.

Today it runs the offline twin of a Block deployment: 12 Llama-2-7B replicas on A100s (Sarathi
scheduler, chunk 512, batch cap 48, as in the Block paper) under ShareGPT load, once per routing
policy, and compares them. Writes `summary.json`, `comparison.csv`, `comparison.md` and
`comparison.png` into `--out`.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

DEFAULT_POLICIES = ("round-robin", "least-requests", "llumnix", "power-of-2", "block")


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="compare routing policies on a simulated Block cluster")
    p.add_argument("--out", default="out/demo", help="folder for the results")
    p.add_argument("--replicas", type=int, default=12)
    p.add_argument("--qps", type=float, default=100.0)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--policies", default=",".join(DEFAULT_POLICIES))
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from block import terminal
    from block.simulator import cluster, policies, summary, workloads
    from block.simulator.latency import LatencyModel
    from block.simulator.replica import Replica, ReplicaConfig

    console = terminal.console()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lat = LatencyModel.load("a100", "meta-llama/Llama-2-7b-hf")
    cfg = ReplicaConfig("sarathi", max_num_batched_tokens=512, max_num_seqs=48)
    console.print(
        f"[bold]Block demo[/bold] (simulated): {args.replicas} x {lat.model.name} on "
        f"{lat.gpu.name}, Sarathi chunk 512, batch cap 48; ShareGPT at {args.qps:g} req/s, "
        f"{args.requests} requests; attention: {lat.attention_label}"
    )
    reqs = workloads.synthesize(
        "sharegpt", args.requests, args.qps, args.seed, lat.model.max_model_len
    )
    results: dict[str, dict[str, Any]] = {}
    for name in [p.strip() for p in args.policies.split(",") if p.strip()]:
        policy = policies.make_policy(name)
        reps = [Replica(lat, cfg, i) for i in range(args.replicas)]
        started = time.perf_counter()
        res = cluster.simulate_cluster(reps, policy, reqs, seed=args.seed)
        report = summary.summarize(res.records)
        report["wall_s"] = time.perf_counter() - started
        results[name] = report
        console.print(f"  {name:<15} simulated in {report['wall_s']:.1f} s")
    table = Table(title="p50 / p99 latency by routing policy (seconds)")
    for col in ("policy", "TTFT p50", "TTFT p99", "e2e p50", "e2e p99", "req/s"):
        table.add_column(col, justify="right")
    rows = []
    for name, r in results.items():
        row = [name, r["ttft"]["p50"], r["ttft"]["p99"], r["e2e"]["p50"], r["e2e"]["p99"],
               r["throughput_rps"]]  # fmt: skip
        rows.append(row)
        table.add_row(name, *(f"{v:.3f}" for v in row[1:]))
    console.print(table)
    header = ["policy", "ttft_p50_s", "ttft_p99_s", "e2e_p50_s", "e2e_p99_s", "throughput_rps"]
    with (out / "comparison.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join([r[0], *(f"{v:.3f}" for v in r[1:])]) + " |" for r in rows]
    (out / "comparison.md").write_text("\n".join(md) + "\n")
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    _plot(out / "comparison.png", rows)
    console.print(
        f"results in {out}/ (comparison.csv, comparison.md, comparison.png, summary.json)"
    )
    return 0


def _plot(path: Path, rows: list[list[Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r[0] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (lo, hi, title) in zip(axes, [(1, 2, "TTFT"), (3, 4, "end-to-end")], strict=True):
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [r[lo] for r in rows], width=0.4, label="p50")
        ax.bar([i + 0.2 for i in x], [r[hi] for r in rows], width=0.4, label="p99")
        ax.set_xticks(list(x), names, rotation=30, ha="right")
        ax.set_ylabel("seconds")
        ax.set_title(title)
    # One legend above both panels: inside an axis it covered the tallest bar.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=100)
    plt.close(fig)
