"""prefix: prefix-cache-aware routing (simulated).

`--workload multi-turn` (default): sessions replay ShareGPT conversations (each turn re-sends
the conversation so far; the next turn arrives an exponential think time after the answer).
`--workload system-prompt`: one-turn requests, each a real ShareGPT first turn behind one of 8
shared 1,024-token system prompts. Policies: `block` predicting TTFT with the prompt's
prefix-cache hits (`block-ttft+prefix`), the same without cache knowledge (`block-ttft`),
`block` on e2e with hits (`block+prefix`), `prefix-affinity` (longest cached prefix, load
tie-break), `least-requests`, `round-robin`. For each, the capacity (highest rate on a grid
whose P99 TTFT meets the SLO), then all policies at 80 % of the best non-Block capacity: hit
rate, p50/p99 TTFT and e2e. Writes prefix.csv, curves.csv, prefix.md, prefix.png,
summary.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

# label -> (policy name, prefix-aware predictions)
POLICIES: dict[str, tuple[str, bool]] = {
    "block-ttft+prefix": ("block-ttft", True),
    "block-ttft": ("block-ttft", False),
    "block+prefix": ("block", True),
    "prefix-affinity": ("prefix-affinity", False),
    "least-requests": ("least-requests", False),
    "round-robin": ("round-robin", False),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--sessions", type=int, default=1500, help="conversations per run")
    p.add_argument("--think", type=float, default=10.0, help="mean think time (s) between turns")
    p.add_argument("--slo-ttft", type=float, default=1.0, help="P99 TTFT limit (seconds)")
    p.add_argument(
        "--workload",
        choices=("multi-turn", "system-prompt"),
        default="multi-turn",
        help="multi-turn ShareGPT sessions, or one-turn requests behind 8 shared system prompts",
    )
    p.add_argument(
        "--rates",
        default=None,
        help="session start rates per s (default 6..21 multi-turn, 10..60 system-prompt)",
    )
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--seed", type=int, default=1)


def _run(args: argparse.Namespace, label: str, rate: float) -> dict[str, Any]:
    from block.simulator import conversations, policies, summary
    from block.simulator.latency import LatencyModel
    from block.simulator.replica import Replica, ReplicaConfig

    name, aware = POLICIES[label]
    lat = LatencyModel.load("a100", "meta-llama/Llama-2-7b-hf")
    reps = [Replica(lat, ReplicaConfig("vllm", 2048, 64), i) for i in range(args.replicas)]
    if args.workload == "system-prompt":
        sessions = conversations.system_prompt_sessions()[: args.sessions]
    else:
        sessions = conversations.sharegpt_sessions()[: args.sessions]
    started = time.perf_counter()
    records = conversations.simulate_sessions(
        reps, policies.make_policy(name), sessions, rate, args.think, args.seed, prefix_aware=aware
    )
    report = summary.summarize(records)
    report["wall_s"] = time.perf_counter() - started
    return report


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in labels if p not in POLICIES]
    if unknown:
        print(f"error: unknown policies {unknown}; known: {', '.join(POLICIES)}")
        return 2
    default_rates = "10,20,30,40,50,60" if args.workload == "system-prompt" else "6,9,12,15,18,21"
    rates = sorted(float(r) for r in (args.rates or default_rates).split(","))
    capacity: dict[str, float] = {}
    rows: list[list[Any]] = []
    for label in labels:
        capacity[label] = 0.0
        for rate in rates:
            rep = _run(args, label, rate)
            ok = rep["ttft"]["p99"] <= args.slo_ttft
            rows.append([label, rate, rep["prefix_hit_rate"], rep["ttft"]["p50"],
                         rep["ttft"]["p99"], rep["e2e"]["p50"], rep["e2e"]["p99"]])  # fmt: skip
            print(f"{label:>18} rate {rate:5.1f}: p99 TTFT {rep['ttft']['p99']:.3f} s, "
                  f"hit {rep['prefix_hit_rate']:.2f} ({rep['wall_s']:.1f} s)")  # fmt: skip
            if not ok:
                break
            capacity[label] = rate
    others = [capacity[p] for p in labels if not p.startswith("block")]
    base = max(others) if others else max(capacity.values())
    point = 0.8 * base if base > 0 else rates[0]
    at_point = {label: _run(args, label, point) for label in labels}
    header = ["policy", "capacity_sessions_per_s", "hit_rate", "ttft_p50_s", "ttft_p99_s",
              "e2e_p50_s", "e2e_p99_s"]  # fmt: skip
    table = [
        [label, capacity[label], r["prefix_hit_rate"], r["ttft"]["p50"], r["ttft"]["p99"],
         r["e2e"]["p50"], r["e2e"]["p99"]]
        for label, r in at_point.items()
    ]  # fmt: skip
    with (out / "prefix.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *table])
    with (out / "curves.csv").open("w", newline="") as f:
        csv.writer(f).writerows(
            [["policy", "rate", "hit_rate", "ttft_p50_s", "ttft_p99_s", "e2e_p50_s", "e2e_p99_s"],
             *rows]
        )  # fmt: skip
    md = [f"{args.workload}: at {point:.1f} sessions/s "
          f"(80 % of the best non-Block capacity, {base:g}/s); "
          f"{args.replicas} replicas, SLO p99 TTFT {args.slo_ttft:g} s.", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    md += ["| " + " | ".join([str(r[0]), *(f"{v:.3f}" for v in r[1:])]) + " |" for r in table]
    (out / "prefix.md").write_text("\n".join(md) + "\n")
    (out / "summary.json").write_text(
        json.dumps({"capacity": capacity, "load_point": point, "at_load_point": at_point}, indent=2)
    )
    _plot(out / "prefix.png", rows, labels)
    print("\n".join(md))
    return 0


def _plot(path: Path, rows: list[list[Any]], labels: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label in labels:
        pts = [r for r in rows if r[0] == label]
        axes[0].plot([r[1] for r in pts], [r[4] for r in pts], marker="o", label=label)
        axes[1].plot([r[1] for r in pts], [r[2] for r in pts], marker="o", label=label)
    axes[0].set(xlabel="sessions/s", ylabel="p99 TTFT (s)", yscale="log", title="TTFT")
    axes[1].set(xlabel="sessions/s", ylabel="prefix hit rate", title="cache hits")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
