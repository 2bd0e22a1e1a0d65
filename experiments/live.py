"""live: the live system on loopback (engine twins, predictor sidecars, gateway) under
`block bench`, one gateway per policy; the README's `make demo`.

A scaled-down cluster that fits 2 CPU cores: few replicas with a small batch cap, so that queues
form at a load whose token stream the processes can carry. The engine twins take their step
times from the same profile the sidecars simulate (`--bias` makes them slower than the profile,
as a real GPU would be). Every policy gets the same planned requests (same prompts, same send
times). Writes comparison.csv, comparison.md, comparison.png, summary.json and, per policy,
the bench records; with `--simulate`, also the simulator's answer for the same cluster and
workload, to compare live with simulated.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path
from typing import Any

from block.errors import BlockError

DEFAULT_POLICIES = "block,least-requests,round-robin"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_live_arguments(p)
    p.add_argument("--qps", type=float, default=13.0, help="offered load (req/s)")
    p.add_argument("--policies", default=DEFAULT_POLICIES, help="gateway policies to compare")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_live_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("live cluster")
    g.add_argument("--live-replicas", type=int, default=4, help="engine twins + sidecars")
    g.add_argument("--live-max-num-seqs", type=int, default=8, help="batch cap of each engine")
    g.add_argument("--live-chunk-size", type=int, default=512, help="chunk of each engine")
    g.add_argument("--live-requests", type=int, default=200, help="requests per policy")
    g.add_argument(
        "--max-tokens-cap", type=int, default=256, help="cap on max_tokens (keeps 2 cores up)"
    )
    g.add_argument("--bias", type=float, default=1.0, help="engine step time vs the profile")
    g.add_argument("--live-seed", type=int, default=1)
    g.add_argument("--no-simulate", action="store_true", help="skip the simulated comparison")


def run(args: argparse.Namespace) -> int:
    try:
        return compare(args, [x.strip() for x in args.policies.split(",") if x.strip()], args.qps)
    except BlockError as e:
        print(f"error: {e.detail}")
        return 2


def compare(args: argparse.Namespace, policies: list[str], qps: float) -> int:
    from block import terminal
    from block.experiments import loadgen, plans, procs, reporting

    console = terminal.console(stderr=True)
    out = Path(args.out)
    engine = procs.EngineSpec(
        chunk_tokens=args.live_chunk_size, max_num_seqs=args.live_max_num_seqs, bias=args.bias
    )
    plan = plans.plan("sharegpt", args.live_requests, qps, args.live_seed,
                      max_tokens_cap=args.max_tokens_cap)  # fmt: skip
    console.print(
        f"[bold]live[/bold]: {args.live_replicas} engine twins (Llama-2-7B/A100 profile, "
        f"{engine.scheduler} chunk {engine.chunk_tokens}, batch cap {engine.max_num_seqs}, "
        f"bias {engine.bias:g}) + sidecars + gateway on loopback; {len(plan)} ShareGPT "
        f"requests at {qps:g} req/s (max_tokens capped at {args.max_tokens_cap})"
    )
    reports: dict[str, dict[str, Any]] = {}
    with procs.LocalCluster(args.live_replicas, engine, out / "logs") as cluster:
        console.print(f"  started {len(cluster.procs)} processes; logs in {out / 'logs'}")
        for policy in policies:
            with cluster.gateway(policy) as url:
                cfg = loadgen.BenchConfig(url, timeout_s=300)
                results, wall, stopped = asyncio.run(_bench(cfg, plan, args.quiet, console))
            report = loadgen.summarize(results, wall)
            reporting.write_csv(out / policy / "records.csv", [r.row() for r in results])
            reporting.write_json(out / policy / "summary.json", report)
            reports[policy] = report
            console.print(
                f"  {policy:<16} TTFT p50/p99 {report['ttft']['p50']:.3f}/"
                f"{report['ttft']['p99']:.3f} s, e2e p50/p99 {report['e2e']['p50']:.2f}/"
                f"{report['e2e']['p99']:.2f} s, {report['failed']} failed"
            )
            if stopped:
                console.print("[yellow]stopped early[/yellow]")
                break
    sim = {} if args.no_simulate else _simulated(args, engine, plan, policies)
    rows = []
    for policy, r in reports.items():
        row = {"policy": policy, "mode": "live", "ttft_p50_s": r["ttft"]["p50"],
               "ttft_p99_s": r["ttft"]["p99"], "e2e_p50_s": r["e2e"]["p50"],
               "e2e_p99_s": r["e2e"]["p99"], "throughput_rps": r["throughput_rps"],
               "completed": r["completed"], "failed": r["failed"]}  # fmt: skip
        rows.append(row)
        if policy in sim:
            s = sim[policy]
            rows.append(
                {**row, "mode": "simulated", "ttft_p50_s": s["ttft"]["p50"],
                 "ttft_p99_s": s["ttft"]["p99"], "e2e_p50_s": s["e2e"]["p50"],
                 "e2e_p99_s": s["e2e"]["p99"], "throughput_rps": s["throughput_rps"],
                 "completed": s["completed"], "failed": 0}
            )  # fmt: skip
    reporting.write_csv(out / "comparison.csv", rows)
    md = [
        f"# Live comparison on loopback at {qps:g} req/s\n",
        f"{args.live_replicas} engine twins + predictor sidecars + gateway; {len(plan)} "
        f"ShareGPT requests per policy (same prompts, same send times); latencies measured "
        "by `block bench` at the client. `simulated`: the simulator on the same cluster and "
        "requests.\n",
        reporting.markdown_table(rows),
    ]
    (out / "comparison.md").write_text("\n".join(md))
    reporting.write_json(out / "summary.json", {"live": reports, "simulated": sim})
    _plot(out / "comparison.png", rows)
    _print_table(console, rows, qps)
    console.print(f"results in {out}/ (comparison.md, comparison.csv, comparison.png)")
    return 0 if reports and all(r["completed"] for r in reports.values()) else 1


async def _bench(cfg: Any, plan: Any, quiet: bool, console: Any) -> Any:
    from block.experiments import benching

    return await benching._send(cfg, plan, quiet, console)


def _simulated(
    args: argparse.Namespace, engine: Any, plan: Any, policies: list[str]
) -> dict[str, dict[str, Any]]:
    """The simulator's answer for the same replicas and the same requests, with oracle
    lengths: `block bench` sends `ignore_eos` with `max_tokens` = the true reply length, so
    the live gateway and sidecars know each length exactly too (an estimated-length
    simulation would be the wrong baseline here)."""
    from block.experiments import clusters, simulating, workload
    from block.simulator.requests import Request

    spec = clusters.ClusterSpec(
        replicas=args.live_replicas, chunk_tokens=engine.chunk_tokens,
        max_num_seqs=engine.max_num_seqs,
    )  # fmt: skip
    reqs = [Request(i, p.send_s, p.prompt_tokens + 1, p.max_tokens) for i, p in enumerate(plan)]
    wl = workload.Workload(reqs, {}, {})
    out: dict[str, dict[str, Any]] = {}
    for policy in policies:
        try:
            out[policy] = simulating.run(spec, policy, wl, "oracle", args.live_seed).summary
        except BlockError:
            continue  # a gateway-only policy the simulator does not know
    return out


def _print_table(console: Any, rows: list[dict[str, Any]], qps: float) -> None:
    from rich.table import Table

    table = Table(title=f"p50 / p99 latency by policy at {qps:g} req/s (seconds)")
    cols = ("policy", "mode", "ttft_p50_s", "ttft_p99_s", "e2e_p50_s", "e2e_p99_s",
            "throughput_rps")  # fmt: skip
    for c in cols:
        table.add_column(c, justify="right")
    from block.experiments import reporting

    for r in rows:
        table.add_row(*(reporting.fmt(r[c]) for c in cols))
    console.print(table)


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    from block.experiments import reporting

    plt = reporting.pyplot()
    live = [r for r in rows if r["mode"] == "live"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = [r["policy"] for r in live]
    for ax, (lo, hi, title) in zip(
        axes, [("ttft_p50_s", "ttft_p99_s", "TTFT"), ("e2e_p50_s", "e2e_p99_s", "e2e")], strict=True
    ):
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [r[lo] for r in live], width=0.4, label="p50")
        ax.bar([i + 0.2 for i in x], [r[hi] for r in live], width=0.4, label="p99")
        sim = {r["policy"]: r for r in rows if r["mode"] == "simulated"}
        ys = [sim[n][hi] if n in sim else math.nan for n in names]
        ax.scatter([i + 0.2 for i in x], ys, color="black", marker="x", label="p99 simulated")
        ax.set_xticks(list(x), names, rotation=20)
        ax.set_ylabel("seconds (live, at the client)")
        ax.set_title(title)
    # One legend above both panels: inside an axis it covered the tallest bar.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def capacity(args: argparse.Namespace) -> int:
    """`capacity --live`: the live cluster at a few loads per policy (a scaled-down latency
    curve, `--live-qps`; a search would take too long in real time on 2 cores)."""
    # The gateway's `block` always uses estimated lengths; ":estimated" labels map onto it.
    from block.experiments import capacity as cap

    chosen = DEFAULT_POLICIES if args.policies == cap.DEFAULT_POLICIES else args.policies
    labels = [label.split(":")[0] for label in chosen.split(",") if label.strip()]
    policies = list(dict.fromkeys(labels))
    base_out = Path(args.out)
    rc = 0
    for qps in [float(q) for q in args.live_qps.split(",") if q.strip()]:
        args.out = str(base_out / f"qps-{qps:g}")
        rc = max(rc, compare(args, policies, qps))
    args.out = str(base_out)
    return rc
