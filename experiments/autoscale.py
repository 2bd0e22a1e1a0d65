"""Autoscaling in simulation: Block's predictive autoscaler against three baselines.

Workloads: the Azure LLM conversation trace's own (bursty) arrivals, time-scaled (default 10x,
so the hour runs in about six simulated minutes and needs 4-16 replicas), and a step load
(Poisson arrivals at low, high, low rates with the trace's request sizes). Strategies:

- `block`: `block.simulator.autoscaling` (Holt forecast + what-if simulation of N-1, N, N+1...);
- `threshold`: Block's original trigger (scale-up only, pre-started instances, one at a time
  when the best predicted e2e of a typical request passes a threshold);
- `reactive`: KEDA/HPA-style, desired = ceil(waiting requests / 5), stabilised scale-down;
- `fixed`: over-provisioning at `--max-replicas` all the time.

Every strategy routes with the same router (least queued prefill, then fewest requests) on
Llama-2-7B / A100 replicas (Sarathi, chunk 512, batch cap 48, as in the Block paper). Times are
on the scaled clock: the start-up lead time and windows shrink with the trace. Reports SLO
attainment (share of all requests whose TTFT meets the SLO; aborted ones miss), p99 TTFT and
replica-hours (from a replica's start, weights loading included, to its removal).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STRATEGIES = ("block", "threshold", "reactive", "fixed")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", help="write the per-workload, per-strategy summary here")
    p.add_argument("--workloads", default="azure,step", help="comma list of azure, step")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--time-scale", type=float, default=10.0, help="Azure trace speed-up")
    p.add_argument("--limit", type=int, default=None, help="first N trace requests only")
    p.add_argument("--step-rates", default="20,60,20", help="req/s of the step load's phases")
    p.add_argument("--step-seconds", default="100,200,200", help="length of each phase, s")
    p.add_argument("--slo-ttft", type=float, default=1.0, help="p99 TTFT objective, s")
    p.add_argument("--min-replicas", type=int, default=4)
    p.add_argument("--max-replicas", type=int, default=16)
    p.add_argument("--initial-replicas", type=int, default=8)
    p.add_argument("--lead", type=float, default=20.0, help="replica start-up lead time, s")
    p.add_argument("--interval", type=float, default=5.0, help="control interval, s")
    p.add_argument("--stabilisation", type=float, default=60.0, help="scale-down window, s")
    p.add_argument("--drain-timeout", type=float, default=60.0, help="drain bound, s")
    p.add_argument("--threshold-e2e", type=float, default=8.0, help="threshold trigger, s")
    p.add_argument("--seed", type=int, default=0)


def _step_requests(args: argparse.Namespace, max_len: int) -> list[Any]:
    from block.errors import ConfigError
    from block.simulator import workloads
    from block.simulator.requests import Request

    rates = [float(x) for x in args.step_rates.split(",")]
    lengths = [float(x) for x in args.step_seconds.split(",")]
    if len(rates) != len(lengths) or not rates:
        raise ConfigError("--step-rates and --step-seconds need the same number of phases")
    trace = workloads.read_trace(workloads.trace_path(workloads.AZURE_CONV))
    rng = random.Random(args.seed)
    out: list[Request] = []
    t0 = 0.0
    for rate, length in zip(rates, lengths, strict=True):
        t = t0
        while True:
            t += rng.expovariate(rate)
            if t >= t0 + length:
                break
            i = rng.randrange(len(trace.arrival_s))
            fitted = workloads.fit_lengths(
                int(trace.prompt_tokens[i]), int(trace.output_tokens[i]), max_len
            )
            if fitted is not None:
                out.append(Request(len(out), t, *fitted))
        t0 += length
    return out


def _controller(name: str, args: argparse.Namespace) -> Any:
    from block.errors import ConfigError
    from block.simulator import autoscaling, elastic

    if name == "block":
        cfg = autoscaling.AutoscalerConfig(
            slo_ttft_s=args.slo_ttft,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            lead_s=args.lead,
            interval_s=args.interval,
            stabilisation_s=args.stabilisation,
            seed=args.seed,
        )
        return elastic.Predictive(cfg)
    if name == "threshold":
        return elastic.Threshold(args.threshold_e2e, args.max_replicas)
    if name == "reactive":
        return elastic.Reactive(
            args.min_replicas, args.max_replicas, stabilisation_s=args.stabilisation
        )
    if name == "fixed":
        return elastic.Fixed(args.max_replicas)
    raise ConfigError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")


def _summary(res: Any, requests: Sequence[Any], slo: float, wall_s: float) -> dict[str, Any]:
    import numpy as np

    ttft = np.array([r.ttft_s for r in res.records] + [float("inf")] * res.aborted)
    return {
        "slo_attainment": float((ttft <= slo).sum() / max(1, len(requests))),
        "ttft_p50": float(np.percentile(ttft, 50)) if ttft.size else float("nan"),
        "ttft_p99": float(np.percentile(ttft, 99)) if ttft.size else float("nan"),
        "replica_hours": res.replica_s / 3600.0,
        "mean_replicas": res.replica_s / max(1e-9, res.timeline[-1][0]) if res.timeline else 0,
        "aborted": res.aborted,
        "requests": len(requests),
        "wall_s": wall_s,
    }


def run(args: argparse.Namespace) -> int:
    from block.errors import BlockError
    from block.simulator import elastic, workloads
    from block.simulator.latency import LatencyModel
    from block.simulator.replica import ReplicaConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        lat = LatencyModel.load("a100", "meta-llama/Llama-2-7b-hf")
        cfg = ReplicaConfig("sarathi", max_num_batched_tokens=512, max_num_seqs=48)
        max_len = lat.model.max_model_len
        loads: dict[str, list[Any]] = {}
        for w in [x.strip() for x in args.workloads.split(",") if x.strip()]:
            if w == "azure":
                trace = workloads.read_trace(workloads.trace_path(workloads.AZURE_CONV))
                loads[w], _ = workloads.from_trace(trace, max_len, args.time_scale, args.limit)
            elif w == "step":
                loads[w] = _step_requests(args, max_len)
            else:
                raise ValueError(f"unknown workload {w!r}; known: azure, step")
        names = [x.strip() for x in args.strategies.split(",") if x.strip()]
        for n in names:
            _controller(n, args)  # validate names before minutes of simulation
    except (BlockError, ValueError) as e:
        print(f"error: {e}")
        return 2
    results: dict[str, dict[str, Any]] = {}
    timelines: dict[str, dict[str, list[tuple[float, int, int]]]] = {}
    for w, reqs in loads.items():
        results[w], timelines[w] = {}, {}
        for name in names:
            ctrl = _controller(name, args)
            initial = args.max_replicas if name == "fixed" else args.initial_replicas
            started = time.perf_counter()
            res = elastic.simulate_elastic(
                lat, cfg, reqs, ctrl, initial=initial, lead_s=args.lead,
                interval_s=args.interval, drain_timeout_s=args.drain_timeout,
            )  # fmt: skip
            s = _summary(res, reqs, args.slo_ttft, time.perf_counter() - started)
            results[w][name] = s
            timelines[w][name] = res.timeline
            print(
                f"{w:>6} {name:<10} attainment {s['slo_attainment']:.3f}  "
                f"TTFT p99 {s['ttft_p99']:7.2f} s  replica-hours {s['replica_hours']:.3f}  "
                f"({s['wall_s']:.0f} s)",
                flush=True,
            )
            if name == "block":
                (out / f"decisions_{w}.txt").write_text(
                    "".join(f"{t:8.1f}  {note}\n" for t, note in res.notes)
                )
    _write(out, results, timelines, loads)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"results in {out}/ (autoscale.md, autoscale.csv, autoscale_*.png, decisions_*.txt)")
    return 0


def _write(
    out: Path,
    results: dict[str, dict[str, dict[str, Any]]],
    timelines: dict[str, dict[str, list[tuple[float, int, int]]]],
    loads: dict[str, list[Any]],
) -> None:
    header = ["workload", "strategy", "slo_attainment", "ttft_p99_s", "replica_hours",
              "vs_fixed_replica_hours", "aborted"]  # fmt: skip
    rows = []
    for w, by in results.items():
        fixed = by.get("fixed", {}).get("replica_hours")
        for name, s in by.items():
            ratio = s["replica_hours"] / fixed if fixed else float("nan")
            att, p99, rh = s["slo_attainment"], s["ttft_p99"], s["replica_hours"]
            rows.append(
                [
                    w,
                    name,
                    f"{att:.4f}",
                    f"{p99:.2f}",
                    f"{rh:.3f}",
                    f"{ratio:.2f}",
                    str(s["aborted"]),
                ]
            )
    with (out / "autoscale.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    (out / "autoscale.md").write_text("\n".join(md) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    for w, lines in timelines.items():
        fig, ax = plt.subplots(figsize=(9, 4))
        for name, tl in lines.items():
            if tl:
                ax.step([t for t, _, _ in tl], [a + b for _, a, b in tl], where="post", label=name)
        ax.set_xlabel("time (s, scaled clock)")
        ax.set_ylabel("replicas (live + starting)")
        ax2 = ax.twinx()
        arr = np.array([r.arrival_s for r in loads[w]])
        if arr.size:
            bins = np.arange(0, arr.max() + 10, 10)
            counts, _ = np.histogram(arr, bins)
            ax2.plot(bins[:-1], counts / 10, color="grey", alpha=0.4, label="arrivals (req/s)")
            ax2.set_ylabel("arrivals, req/s (grey)")
        ax.legend(loc="upper left")
        ax.set_title(f"replicas over time: {w}")
        fig.tight_layout()
        fig.savefig(out / f"autoscale_{w}.png", dpi=100)
        plt.close(fig)
