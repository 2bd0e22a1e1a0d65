"""config-search: capacity per engine configuration, batch cap x chunk size (Table 2).

For every (max_num_seqs, chunk tokens) pair, the capacity (highest QPS with P99 TTFT under the
SLO) of each policy, found by the same search as `capacity`. Writes config_search.csv,
config_search.md, config_search.png, summary.json.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

from block.errors import BlockError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from block.experiments import capacity, clusters

    clusters.add_arguments(p)
    capacity.add_workload_arguments(p, requests=2000)
    p.add_argument("--batch-caps", default="24,48", help="max_num_seqs values")
    p.add_argument("--chunks", default="512,2048", help="chunk sizes (tokens per step)")
    p.add_argument("--policies", default="block:estimated,least-requests")
    p.add_argument("--slo-ttft", type=float, default=3.0, help="P99 TTFT limit (seconds)")
    p.add_argument("--start-qps", type=float, default=100.0)
    p.add_argument("--rel-tol", type=float, default=0.04)
    p.add_argument("--quiet", action="store_true")


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise BlockError(f"expected comma-separated integers, got {text!r}") from e


def run(args: argparse.Namespace) -> int:
    from block.experiments import study

    return study.guarded(_run, args)


def _run(args: argparse.Namespace) -> int:
    from block.experiments import reporting, simulating, study, workload
    from block.experiments.search import find_capacity

    console, out, base_spec, labels, pool, remaining = study.start(args)
    base = workload.poisson(pool, args.requests, 1.0, args.seed)
    rows: list[dict[str, Any]] = []
    for cap, chunk in itertools.product(_ints(args.batch_caps), _ints(args.chunks)):
        spec = base_spec.with_engine(chunk, cap)
        for label in labels:
            name, lengths = reporting.split_policy(label)

            def objective(
                qps: float, spec: Any = spec, name: str = name, ln: str = lengths
            ) -> float:
                res = simulating.run(
                    spec, name, workload.scaled(base, qps), ln, args.seed,  # type: ignore[arg-type]
                    stop_ttft_s=args.slo_ttft, remaining=remaining,
                )  # fmt: skip
                return simulating.p99_ttft(res)

            found = find_capacity(objective, args.slo_ttft, args.start_qps, args.rel_tol)
            console.print(
                f"  batch cap {cap:>3} chunk {chunk:>5} {label:<16} "
                f"capacity {found.capacity_qps:7.2f} req/s ({found.evaluations} runs)"
            )
            rows.append(
                {"max_num_seqs": cap, "chunk_tokens": chunk, "policy": label,
                 "capacity_qps": found.capacity_qps, "evaluations": found.evaluations}
            )  # fmt: skip
    reporting.write_csv(out / "config_search.csv", rows)
    md = [
        f"# Capacity by engine configuration (P99 TTFT <= {args.slo_ttft:g} s)\n",
        f"{base_spec.describe()} (batch cap and chunk varied); {args.requests} held-out "
        f"ShareGPT requests per run; estimated lengths from `{pool.estimate_source}`.\n",
        reporting.markdown_table(rows),
    ]
    (out / "config_search.md").write_text("\n".join(md))
    reporting.write_json(out / "summary.json", {"spec": base_spec.describe(), "rows": rows})
    plt = reporting.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    configs = sorted({(r["max_num_seqs"], r["chunk_tokens"]) for r in rows})
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        vals = [next(r["capacity_qps"] for r in rows if r["policy"] == label
                     and (r["max_num_seqs"], r["chunk_tokens"]) == c) for c in configs]  # fmt: skip
        ax.bar([i + j * width for i in range(len(configs))], vals, width=width, label=label)
    ax.set_xticks(
        [i + width * (len(labels) - 1) / 2 for i in range(len(configs))],
        [f"cap {c}, chunk {k}" for c, k in configs],
    )
    ax.set_ylabel("capacity (req/s)")
    ax.set_title("capacity by batch cap x chunk size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "config_search.png", dpi=100)
    plt.close(fig)
    print("\n".join(md))
    return 0
