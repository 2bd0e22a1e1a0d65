"""The work behind `block bench`: plan, send with a progress bar, stop cleanly, write results."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from block.errors import BlockError
from block.experiments import loadgen, plans, reporting
from block.simulator import workloads


def main(args: argparse.Namespace) -> int:
    from block import terminal

    console = terminal.console(stderr=True)
    if not args.url.startswith(("http://", "https://")):
        console.print(f"[red]error:[/red] --url must be an http(s) URL, got {args.url!r}")
        return 2
    try:
        plan = plans.plan(
            args.workload, args.requests, args.qps, args.seed, args.cv,
            workloads.resolve_trace(args.trace) if args.trace else None, args.time_scale,
            args.max_model_len,
            args.max_tokens_cap,
        )  # fmt: skip
    except BlockError as e:
        console.print(f"[red]error:[/red] {e.detail}")
        return 2
    if not plan:
        console.print("[red]error:[/red] the workload has no requests that fit")
        return 2
    cfg = loadgen.BenchConfig(
        url=args.url, model=args.model, timeout_s=args.timeout,
        ignore_eos=not args.no_ignore_eos, api_key=args.api_key, grace_s=args.grace,
    )  # fmt: skip
    results, wall, stopped = asyncio.run(_send(cfg, plan, args.quiet, console))
    report = loadgen.summarize(results, wall)
    report["config"] = {
        "url": args.url, "workload": args.trace or args.workload, "qps": args.qps,
        "cv": args.cv, "time_scale": args.time_scale, "requests_planned": len(plan),
        "requests_sent": len(results), "stopped_early": stopped, "seed": args.seed,
    }  # fmt: skip
    write(Path(args.out), results, report)
    print_report(report, console)
    if report["completed"] == 0:
        errors = {r.error for r in results if r.error}
        console.print(f"[red]no request succeeded[/red]: {'; '.join(sorted(errors)[:3])}")
        return 1
    return 130 if stopped else 0


async def _send(
    cfg: loadgen.BenchConfig, plan: list[plans.PlannedRequest], quiet: bool, console: Any
) -> tuple[list[loadgen.Result], float, bool]:
    from rich.progress import Progress

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    failed = 0
    with Progress(console=console, disable=quiet, transient=True) as bar:
        task = bar.add_task(f"{len(plan)} requests", total=len(plan))

        def done(r: loadgen.Result) -> None:
            nonlocal failed
            failed += 0 if r.ok else 1
            bar.update(task, advance=1, description=f"{len(plan)} requests, {failed} failed")

        try:
            return await loadgen.run_plan(cfg, plan, stop, done)
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)
                loop.remove_signal_handler(signal.SIGTERM)


def write(out: Path, results: list[loadgen.Result], report: dict[str, Any]) -> None:
    reporting.write_csv(out / "records.csv", [r.row() for r in results])
    reporting.write_json(out / "summary.json", report)


def print_report(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title="measured at the client (seconds)")
    table.add_column("metric")
    for col in ("mean", "p50", "p90", "p99"):
        table.add_column(col, justify="right")
    for key in ("ttft", "itl", "tpot", "e2e"):
        table.add_row(
            key, *(reporting.fmt(report[key][c], 4) for c in ("mean", "p50", "p90", "p99"))
        )
    console.print(table)
    console.print(
        f"completed {report['completed']}, failed {report['failed']}; "
        f"{report['throughput_rps']:.2f} req/s, {report['output_tokens_per_s']:.0f} output tok/s"
    )
