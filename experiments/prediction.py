"""prediction: how close Block's dispatch-time predictions come to what then happens (Fig. 5).

At each dispatch the `block` policy predicts the request's TTFT and e2e on the replica it picks;
the simulated engine (true lengths, later arrivals included) then produces the outcome. With
estimated lengths the prediction errs by the length estimate, by the router's belief of the
queued requests' lengths (see `block.experiments.simulating`) and by requests that arrive later
and share the batch; with oracle lengths only by the last. Writes predictions.csv,
prediction.md, prediction.png, summary.json.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from block.errors import BlockError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from block.experiments import capacity, clusters

    clusters.add_arguments(p)
    capacity.add_workload_arguments(p, requests=3000)
    p.add_argument("--qps", type=float, default=100.0, help="offered load (req/s)")
    p.add_argument("--policy", default="block", help="a predicting policy (block, block-ttft)")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from block.experiments import study

    return study.guarded(_run, args)


def error_stats(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Absolute error (s) percentiles and the median relative error, of predicted vs actual."""
    err = predicted - actual
    rel = np.abs(err) / np.maximum(actual, 1e-9)
    return {
        "mean_error_s": float(err.mean()),
        "abs_error_p50_s": float(np.percentile(np.abs(err), 50)),
        "abs_error_p90_s": float(np.percentile(np.abs(err), 90)),
        "rel_error_p50": float(np.median(rel)),
        "rel_error_p90": float(np.percentile(rel, 90)),
        "within_10pct": float(np.mean(rel <= 0.10)),
    }


def _run(args: argparse.Namespace) -> int:
    from block import terminal
    from block.experiments import clusters, reporting, simulating, workload
    from block.simulator import policies

    if not policies.make_policy(args.policy).needs_prediction:
        raise BlockError(f"policy {args.policy!r} makes no predictions")
    console = terminal.console(stderr=True, quiet=args.quiet)
    out = Path(args.out)
    spec = clusters.from_args(args)
    pool = workload.load_pool(spec.max_model_len, args.lengths_from)
    wl = workload.poisson(pool, args.requests, args.qps, args.seed)
    remaining = simulating.RemainingLength([c.output_tokens for c in pool.conversations])
    console.print(f"prediction: {spec.describe()}; {args.requests} requests at {args.qps:g} req/s")
    rows: list[dict[str, Any]] = []
    table: list[dict[str, Any]] = []
    for lengths in ("estimated", "oracle"):
        res = simulating.run(
            spec, args.policy, wl, lengths, args.seed, remaining=remaining, keep_predictions=True
        )
        console.print(f"  {lengths}: simulated in {res.wall_s:.1f} s")
        got = [(r, res.predictions[r.rid]) for r in res.records if r.rid in res.predictions]
        for r, p in got:
            rows.append(
                {"lengths": lengths, "rid": r.rid, "replica": r.replica,
                 "true_output_tokens": r.output_tokens, "believed_output_tokens":
                 wl.guess(wl.requests[r.rid]) if lengths == "estimated" else r.output_tokens,
                 "predicted_ttft_s": p.ttft_s, "actual_ttft_s": r.ttft_s,
                 "predicted_e2e_s": p.e2e_s, "actual_e2e_s": r.e2e_s}
            )  # fmt: skip
        for metric in ("ttft", "e2e"):
            pred = np.array([getattr(p, f"{metric}_s") for _, p in got])
            act = np.array([getattr(r, f"{metric}_s") for r, _ in got])
            table.append({"lengths": lengths, "metric": metric, **error_stats(pred, act)})
    reporting.write_csv(out / "predictions.csv", rows)
    md = [
        f"# Prediction accuracy of `{args.policy}` at {args.qps:g} req/s\n",
        f"{spec.describe()}; {args.requests} held-out ShareGPT requests; estimated lengths from "
        f"`{pool.estimate_source}` (MAE {workload.estimate_error(pool)['mae_tokens']:.0f} "
        "tokens). Error = predicted at dispatch − simulated outcome.\n",
        reporting.markdown_table(table),
    ]
    (out / "prediction.md").write_text("\n".join(md))
    reporting.write_json(
        out / "summary.json",
        {"spec": spec.describe(), "qps": args.qps, "policy": args.policy,
         "estimate_source": pool.estimate_source, "errors": table},
    )  # fmt: skip
    _plot(out / "prediction.png", rows)
    print("\n".join(md))
    return 0


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    from block.experiments import reporting

    plt = reporting.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for lengths, color in (("oracle", "tab:green"), ("estimated", "tab:blue")):
        sel = [r for r in rows if r["lengths"] == lengths]
        if not sel:
            continue
        pe = np.array([r["predicted_e2e_s"] for r in sel])
        ae = np.array([r["actual_e2e_s"] for r in sel])
        axes[0].scatter(ae, pe, s=3, alpha=0.4, color=color, label=f"{lengths} lengths")
        rel = (pe - ae) / np.maximum(ae, 1e-9)
        axes[1].hist(np.clip(rel, -2, 2), bins=80, alpha=0.5, color=color, label=lengths)
        terr = np.array([r["predicted_ttft_s"] - r["actual_ttft_s"] for r in sel])
        lim = max(1e-3, float(np.percentile(np.abs(terr), 99)))
        axes[2].hist(np.clip(terr, -lim, lim), bins=80, alpha=0.5, color=color, label=lengths)
    top = max((r["actual_e2e_s"] for r in rows), default=1.0)
    top = top if math.isfinite(top) else 1.0
    axes[0].plot([0, top], [0, top], color="grey", linestyle="--")
    axes[0].set_xlabel("actual e2e (s)")
    axes[0].set_ylabel("predicted e2e (s)")
    axes[0].set_title("e2e: predicted at dispatch vs actual")
    axes[1].set_xlabel("relative e2e error (clipped to ±2)")
    axes[1].set_title("e2e error distribution")
    axes[2].set_xlabel("TTFT error (s, clipped to P99 |error|)")
    axes[2].set_title("TTFT error distribution")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
