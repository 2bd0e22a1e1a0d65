"""Handlers behind `block simulate` and `block profiles export`: build, run, report."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from block.errors import BlockError
from block.simulator import cluster, export, policies, summary, workloads
from block.simulator.latency import LatencyModel
from block.simulator.replica import Replica, ReplicaConfig
from block.simulator.requests import Request, RequestRecord


def replica_config(args: argparse.Namespace) -> ReplicaConfig:
    sarathi = args.scheduler == "sarathi"
    return ReplicaConfig(
        scheduler=args.scheduler,
        max_num_batched_tokens=args.chunk_size or (512 if sarathi else 2048),
        max_num_seqs=args.max_num_seqs or (48 if sarathi else 256),
        block_size=args.block_size,
        num_blocks=args.num_blocks,
    )


def latency_model(args: argparse.Namespace) -> LatencyModel:
    return LatencyModel.load(
        args.gpu, args.model, args.tp, attention=args.attention, compat=args.latency_compat
    )


def build_requests(args: argparse.Namespace, max_model_len: int) -> tuple[list[Request], int]:
    if args.trace:
        trace = workloads.read_trace(workloads.resolve_trace(args.trace))
        return workloads.from_trace(trace, max_model_len, args.time_scale, args.requests)
    reqs = workloads.synthesize(
        args.workload, args.requests, args.qps, args.seed, max_model_len, cv=args.cv
    )
    return reqs, 0


def write_records(path: Path, records: Sequence[RequestRecord]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["rid", "replica", "arrival_s", "queue_s", "ttft_s", "tpot_s", "e2e_s",
             "prompt_tokens", "output_tokens", "preemptions"]
        )  # fmt: skip
        for r in records:
            w.writerow(
                [r.rid, r.replica, f"{r.arrival_s:.6f}", f"{r.queue_s:.6f}", f"{r.ttft_s:.6f}",
                 f"{r.tpot_s:.6f}", f"{r.e2e_s:.6f}", r.prompt_tokens, r.output_tokens,
                 r.preemptions]
            )  # fmt: skip


def simulate_command(args: argparse.Namespace) -> int:
    from rich.progress import Progress
    from rich.table import Table

    from block import terminal

    console = terminal.console(stderr=True)
    try:
        lat = latency_model(args)
        cfg = replica_config(args)
        reps = [Replica(lat, cfg, i) for i in range(args.replicas)]
        reqs, dropped = build_requests(args, reps[0].max_model_len)
        policy = policies.make_policy(args.policy)
    except BlockError as e:
        console.print(f"[red]error:[/red] {e.detail}")
        return 2
    if not reqs:
        console.print("[red]error:[/red] the workload has no requests")
        return 2
    started = time.perf_counter()
    with Progress(console=console, disable=args.quiet, transient=True) as bar:
        task = bar.add_task(f"simulating {policy.name}", total=len(reqs))
        result = cluster.simulate_cluster(
            reps, policy, reqs, seed=args.seed, progress=lambda i: bar.update(task, completed=i)
        )
    wall = time.perf_counter() - started
    report = summary.summarize(result.records)
    report["config"] = {
        **lat.describe(),
        "scheduler": cfg.scheduler,
        "max_num_batched_tokens": cfg.max_num_batched_tokens,
        "max_num_seqs": cfg.max_num_seqs,
        "num_blocks": reps[0].num_blocks,
        "block_size": cfg.block_size,
        "replicas": args.replicas,
        "policy": policy.name,
        "workload": args.trace or args.workload,
        "qps": None if args.trace else args.qps,
        "cv": None if args.trace else args.cv,
        "time_scale": args.time_scale if args.trace else None,
        "requests": len(reqs),
        "dropped_too_long": dropped,
        "seed": args.seed,
    }
    report["wall_s"] = wall
    table = Table(title=f"{policy.name} on {args.replicas} x {lat.model.name} ({lat.gpu.name})")
    table.add_column("metric")
    for col in ("mean", "p50", "p90", "p99"):
        table.add_column(col, justify="right")
    for key in ("ttft", "tpot", "e2e", "queue"):
        row = report[key]
        table.add_row(f"{key} (s)", *(f"{row[c]:.4f}" for c in ("mean", "p50", "p90", "p99")))
    out = terminal.console()
    out.print(table)
    out.print(
        f"completed {report['completed']} requests, {report['throughput_rps']:.2f} req/s, "
        f"{report['output_tokens_per_s']:.0f} output tok/s, {report['preemptions']} preemptions; "
        f"attention model: {lat.attention_label}; simulated in {wall:.2f} s"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    if args.records:
        write_records(Path(args.records), result.records)
    return 0


def export_command(args: argparse.Namespace) -> int:
    try:
        lat = LatencyModel.load(args.gpu, args.model, args.tp, attention=args.attention)
        paths = export.export_profiles(lat, Path(args.out))
    except BlockError as e:
        print(f"error: {e.detail}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


def describe(lat: LatencyModel) -> dict[str, Any]:
    return lat.describe()
