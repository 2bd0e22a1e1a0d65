"""burstiness: policies under Gamma arrivals of growing variability and the Azure trace's timing.

ShareGPT requests at one mean QPS with Gamma inter-arrival gaps of coefficient of variation
{0.5, 1, 2, 4} (1 is Poisson), then the Azure LLM conversation trace (2023) replayed at its
own timestamps, compressed to the same mean QPS. Azure requests have no text: their estimated
lengths come from a prompt-length-conditioned median fitted on the trace's requests outside the
replayed window. Writes burstiness.csv, burstiness.md, burstiness.png, summary.json.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from block.errors import BlockError

DEFAULT_POLICIES = "block:estimated,block,least-requests,llumnix,power-of-2,round-robin"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from block.experiments import capacity, clusters

    clusters.add_arguments(p)
    capacity.add_workload_arguments(p, requests=3000)
    p.add_argument("--qps", type=float, default=100.0, help="mean offered load (req/s)")
    p.add_argument("--cvs", default="0.5,1,2,4", help="Gamma coefficients of variation")
    p.add_argument("--policies", default=DEFAULT_POLICIES)
    p.add_argument("--no-azure", action="store_true", help="skip the Azure trace replay")
    p.add_argument("--azure-offset", type=int, default=8000, help="first trace row replayed")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from block.experiments import study

    return study.guarded(_run, args)


def azure_workload(n: int, qps: float, offset: int, max_model_len: int) -> tuple[Any, float]:
    """`n` Azure-trace requests from row `offset`, time-compressed to mean `qps`; the router's
    lengths from a prompt-median model of the rows outside that window. Returns (workload,
    speed-up over the recorded timing)."""
    from block.experiments import workload
    from block.simulator import workloads
    from block.simulator.requests import Request

    trace = workloads.read_trace(workloads.trace_path(workloads.AZURE_CONV))
    total = len(trace.arrival_s)
    if offset < 0 or offset + n > total:
        raise BlockError(f"the Azure trace has {total} rows; cannot replay {n} from {offset}")
    outside = np.r_[0:offset, offset + n : total]
    model = workload.PromptMedian(
        trace.prompt_tokens[outside].tolist(), trace.output_tokens[outside].tolist()
    )
    t = trace.arrival_s[offset : offset + n] - trace.arrival_s[offset]
    # The trace's own mean rate is (n - 1) / span; replaying it `speed` times faster gives qps.
    speed = qps * max(float(t[-1]), 1e-9) / max(1, len(t) - 1)
    reqs: list[Request] = []
    est: dict[int, int] = {}
    for i in range(n):
        fitted = workloads.fit_lengths(
            int(trace.prompt_tokens[offset + i]), int(trace.output_tokens[offset + i]),
            max_model_len,
        )  # fmt: skip
        if fitted is None:
            continue
        rid = len(reqs)
        reqs.append(Request(rid, float(t[i]) / speed, *fitted))
        est[rid] = max(1, min(model(fitted[0]), max_model_len - fitted[0]))
    return workload.Workload(reqs, est, {}), speed


def _run(args: argparse.Namespace) -> int:
    from block.experiments import reporting, simulating, study, workload

    console, out, spec, labels, pool, remaining = study.start(args)
    cases: list[tuple[str, Any]] = []
    for cv in [float(x) for x in args.cvs.split(",") if x.strip()]:
        cases.append((f"gamma cv={cv:g}", workload.poisson(pool, args.requests, args.qps,
                                                          args.seed, cv=cv)))  # fmt: skip
    azure_note = ""
    if not args.no_azure:
        wl, speed = azure_workload(args.requests, args.qps, args.azure_offset, spec.max_model_len)
        cases.append(("azure-conv trace", wl))
        azure_note = f" The Azure trace is replayed {speed:.1f}x faster than recorded."
    rows: list[dict[str, Any]] = []
    for case, wl in cases:
        for label in labels:
            name, lengths = reporting.split_policy(label)
            res = simulating.run(spec, name, wl, lengths, args.seed,  # type: ignore[arg-type]
                                 remaining=remaining)  # fmt: skip
            s = res.summary
            rows.append(
                {"arrivals": case, "policy": label, "ttft_p50_s": s["ttft"]["p50"],
                 "ttft_p99_s": s["ttft"]["p99"], "e2e_p50_s": s["e2e"]["p50"],
                 "e2e_p99_s": s["e2e"]["p99"], "throughput_rps": s["throughput_rps"]}
            )  # fmt: skip
            console.print(
                f"  {case:<18} {label:<16} P99 TTFT {s['ttft']['p99']:7.3f} s  "
                f"P99 e2e {s['e2e']['p99']:7.2f} s  ({res.wall_s:.1f} s)"
            )
    reporting.write_csv(out / "burstiness.csv", rows)
    md = [
        f"# Burstiness at a mean of {args.qps:g} req/s\n",
        f"{spec.describe()}; {args.requests} requests per case; ShareGPT estimated lengths from "
        f"`{pool.estimate_source}`.{azure_note}\n",
        reporting.markdown_table(rows),
    ]
    (out / "burstiness.md").write_text("\n".join(md))
    reporting.write_json(out / "summary.json", {"spec": spec.describe(), "rows": rows})
    plt = reporting.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [c for c, _ in cases]
    width = 0.8 / max(1, len(labels))
    for ax, key, title in ((axes[0], "ttft_p99_s", "P99 TTFT"), (axes[1], "e2e_p99_s", "P99 e2e")):
        for j, label in enumerate(labels):
            vals = [next(r[key] for r in rows if r["arrivals"] == c and r["policy"] == label)
                    for c in names]  # fmt: skip
            ax.bar([i + j * width for i in range(len(names))], vals, width=width, label=label)
        ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(names))], names,
                      rotation=20)  # fmt: skip
        ax.set_yscale("log")
        ax.set_ylabel("seconds")
        ax.set_title(f"{title} by arrival process")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "burstiness.png", dpi=100)
    plt.close(fig)
    print("\n".join(md))
    return 0
