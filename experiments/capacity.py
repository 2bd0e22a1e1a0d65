"""capacity: per policy, the highest QPS whose P99 TTFT meets the SLO, and latency-vs-QPS curves.

The Block paper's Fig. 6 analogue: 12 Llama-2-7B replicas on A100 (Sarathi, chunk 512, batch
cap 48), held-out ShareGPT conversations at Poisson arrivals. Each policy's capacity is found by
search over simulated runs (the same request sequence, time-compressed, at every QPS); the
curves are measured on a common grid of fractions of the best heuristic's capacity. Policies
are `name` or `name:estimated` (the router believes estimated lengths; see
`block.experiments.simulating`). Writes capacity.csv, curves.csv, capacity.md, capacity.png,
summary.json.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

from block.errors import BlockError

logger = logging.getLogger(__name__)

DEFAULT_POLICIES = "block:estimated,block,power-of-2,llumnix,least-requests,round-robin,random"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from block.experiments import clusters

    clusters.add_arguments(p)
    add_workload_arguments(p)
    p.add_argument("--policies", default=DEFAULT_POLICIES, help="comma-separated policy labels")
    p.add_argument("--slo-ttft", type=float, default=3.0, help="P99 TTFT limit (seconds)")
    p.add_argument("--start-qps", type=float, default=100.0, help="first QPS the search tries")
    p.add_argument("--rel-tol", type=float, default=0.03, help="search stops at this bracket")
    p.add_argument(
        "--grid",
        default="0.5,0.7,0.8,0.9,1.0,1.1",
        help="curve loads, as fractions of the best heuristic's capacity",
    )
    p.add_argument("--live", action="store_true", help="against real processes on loopback")
    p.add_argument(
        "--live-qps", default="8,11,14", help="--live: loads to measure (req/s), comma-separated"
    )
    from block.experiments import live

    live.add_live_arguments(p)
    p.add_argument("--quiet", action="store_true")


def add_workload_arguments(p: argparse.ArgumentParser, requests: int = 3000) -> None:
    p.add_argument("--requests", type=int, default=requests, help="requests per run")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--lengths-from",
        choices=("auto", "estimator", "prompt-median"),
        default="auto",
        help="where estimated lengths come from (auto: the estimator if installed)",
    )


def run(args: argparse.Namespace) -> int:
    if args.live:
        from block.experiments import live

        return live.capacity(args)
    try:
        return _run(args)
    except BlockError as e:
        logger.error("capacity: %s", e.detail)
        print(f"error: {e.detail}")
        return 2


def _run(args: argparse.Namespace) -> int:
    from block.experiments import reporting, simulating, study, workload
    from block.experiments.search import find_capacity
    from block.simulator import policies

    console, out, spec, labels, pool, remaining = study.start(args)
    base = workload.poisson(pool, args.requests, 1.0, args.seed)
    console.print(
        f"capacity: {spec.describe()}; {args.requests} held-out ShareGPT requests per run; "
        f"estimated lengths from {pool.estimate_source}; SLO P99 TTFT <= {args.slo_ttft:g} s"
    )

    def measure(label: str, qps: float) -> simulating.PointResult:
        name, lengths = reporting.split_policy(label)
        res = simulating.run(
            spec, name, workload.scaled(base, qps), lengths, args.seed,  # type: ignore[arg-type]
            stop_ttft_s=args.slo_ttft, remaining=remaining,
        )  # fmt: skip
        console.print(
            f"  {label:<18} {qps:8.2f} req/s  P99 TTFT "
            f"{reporting.fmt(simulating.p99_ttft(res))} s  ({res.wall_s:.1f} s)"
        )
        return res

    caps: dict[str, Any] = {}
    curves: list[dict[str, Any]] = []
    for label in labels:
        points: dict[float, simulating.PointResult] = {}

        def objective(qps: float, label: str = label, points: Any = points) -> float:
            points[qps] = measure(label, qps)
            return simulating.p99_ttft(points[qps])

        found = find_capacity(objective, args.slo_ttft, args.start_qps, args.rel_tol)
        caps[label] = found
        for qps, res in sorted(points.items()):
            curves.append(_curve_row(label, qps, res, "search"))
    heuristics = [
        lab
        for lab in labels
        if not policies.make_policy(reporting.split_policy(lab)[0]).needs_prediction
    ]
    best_h = max(heuristics, key=lambda lab: caps[lab].capacity_qps, default=None)
    ref = caps[best_h].capacity_qps if best_h else max(c.capacity_qps for c in caps.values())
    grid = [float(f) * ref for f in args.grid.split(",") if f.strip()] if ref > 0 else []
    for qps in grid:
        for label in labels:
            curves.append(_curve_row(label, qps, measure(label, qps), "grid"))

    cap_rows = []
    for label in labels:
        c = caps[label]
        gain = (c.capacity_qps / ref - 1) * 100 if ref > 0 else math.nan
        cap_rows.append(
            {"policy": label, "capacity_qps": c.capacity_qps, "failing_qps": c.failing_qps,
             "vs_best_heuristic_pct": gain, "evaluations": c.evaluations}
        )  # fmt: skip
    reporting.write_csv(out / "capacity.csv", cap_rows)
    reporting.write_csv(out / "curves.csv", curves)
    at = _at_load(curves, labels, best_h, ref)
    md = [
        f"# Capacity under P99 TTFT <= {args.slo_ttft:g} s\n",
        f"{spec.describe()}. {args.requests} held-out ShareGPT requests per run, Poisson "
        f"arrivals; estimated lengths from `{pool.estimate_source}` "
        f"(MAE {workload.estimate_error(pool)['mae_tokens']:.0f} tokens). Best heuristic: "
        f"{best_h} at {ref:.2f} req/s.\n",
        reporting.markdown_table(cap_rows),
        f"\n## Latency at the best heuristic's capacity ({ref:.2f} req/s)\n",
        reporting.markdown_table(at),
    ]
    (out / "capacity.md").write_text("\n".join(md))
    reporting.write_json(
        out / "summary.json",
        {"spec": spec.describe(), "slo_ttft_s": args.slo_ttft, "requests": args.requests,
         "estimate_source": pool.estimate_source, "estimate_notes": pool.notes,
         "estimate_error": workload.estimate_error(pool), "best_heuristic": best_h,
         "capacity": cap_rows, "at_reference_load": at},
    )  # fmt: skip
    _plot(out / "capacity.png", cap_rows, curves, labels, args.slo_ttft)
    console.print(md[2])
    print((out / "capacity.md").read_text())
    return 0


def _curve_row(label: str, qps: float, res: Any, phase: str) -> dict[str, Any]:
    s = res.summary
    nan = math.nan
    return {
        "policy": label,
        "qps": round(qps, 4),
        "phase": phase,
        "aborted": res.aborted,
        "ttft_p50_s": s["ttft"]["p50"] if "ttft" in s else nan,
        "ttft_p99_s": s["ttft"]["p99"] if "ttft" in s else math.inf,
        "e2e_p50_s": s["e2e"]["p50"] if "e2e" in s else nan,
        "e2e_p99_s": s["e2e"]["p99"] if "e2e" in s else math.inf,
        "throughput_rps": s.get("throughput_rps", nan),
        "wall_s": round(res.wall_s, 3),
    }


def _at_load(
    curves: list[dict[str, Any]], labels: list[str], best_h: str | None, ref: float
) -> list[dict[str, Any]]:
    """Each policy's latency at the reference load, with the change against the best heuristic."""
    rows = {r["policy"]: r for r in curves if r["phase"] == "grid" and abs(r["qps"] - ref) < 1e-3}
    base = rows.get(best_h or "")
    out = []
    for label in labels:
        r = rows.get(label)
        if r is None:
            continue
        row = {k: r[k] for k in ("policy", "ttft_p50_s", "ttft_p99_s", "e2e_p50_s", "e2e_p99_s")}
        for k in ("ttft_p99_s", "e2e_p99_s"):
            b = base[k] if base else math.nan
            row[f"{k[:-2]}_change_pct"] = (
                (r[k] / b - 1) * 100 if b and math.isfinite(b) else math.nan
            )
        out.append(row)
    return out


def _plot(
    path: Path,
    cap_rows: list[dict[str, Any]],
    curves: list[dict[str, Any]],
    labels: list[str],
    slo: float,
) -> None:
    from block.experiments import reporting

    plt = reporting.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label in labels:
        pts = sorted(
            (r["qps"], r["ttft_p99_s"])
            for r in curves
            if r["policy"] == label and not r["aborted"] and math.isfinite(r["ttft_p99_s"])
        )
        if pts:
            ax1.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax1.axhline(slo, color="grey", linestyle="--", label=f"SLO {slo:g} s")
    ax1.set_yscale("log")
    ax1.set_xlabel("offered load (req/s)")
    ax1.set_ylabel("P99 TTFT (s)")
    ax1.set_title("P99 TTFT vs load")
    ax1.legend(fontsize=8)
    ax2.bar([r["policy"] for r in cap_rows], [r["capacity_qps"] for r in cap_rows])
    ax2.set_ylabel("capacity (req/s)")
    ax2.set_title(f"highest load with P99 TTFT <= {slo:g} s")
    ax2.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
