"""`block simulate` and `block profiles export` (argument parsing only; work in handlers)."""

from __future__ import annotations

import argparse
from typing import Any

SCHEDULERS = ("vllm", "sarathi")


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """Flags describing one engine replica, shared by every command that simulates one."""
    p.add_argument(
        "--gpu",
        default="a100",
        help="hardware profile: a100, h100, or any folder on BLOCK_PROFILES_DIR",
    )
    p.add_argument("--model", default="meta-llama/Llama-2-7b-hf", help="model name or alias")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="vllm", help="engine scheduler")
    p.add_argument(
        "--chunk-size",
        "--max-num-batched-tokens",
        dest="chunk_size",
        type=int,
        default=None,
        help="token budget per step (default: 512 for sarathi, 2048 for vllm)",
    )
    p.add_argument("--max-num-seqs", type=int, default=None, help="batch cap (default 48/256)")
    p.add_argument("--num-blocks", type=int, default=None, help="KV blocks (default: from memory)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    p.add_argument(
        "--attention",
        default="auto",
        help="attention model: auto (measured table if any, else analytic), analytic, or a CSV",
    )
    p.add_argument(
        "--latency-compat",
        choices=("none", "vidur"),
        default="none",
        help="reproduce Vidur's rounding of batch features (for side-by-side comparison)",
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a cluster of engine replicas under a routing policy",
        description="Simulate N engine replicas behind a global policy on a workload.",
    )
    add_engine_arguments(p)
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--policy", default="round-robin", help="routing policy (see block.simulator)")
    p.add_argument("--workload", default="sharegpt", help="sharegpt, azure-conv or arxiv sizes")
    p.add_argument("--qps", type=float, default=10.0, help="mean arrival rate")
    p.add_argument("--cv", type=float, default=1.0, help="gap variation: 1 Poisson, >1 bursty")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument(
        "--trace",
        default=None,
        help="CSV trace (Azure or Vidur columns) to replay: a file, or the name of one that "
        "ships with Block (azure_llm_2023_conv.csv, arxiv_summarization_llama2.csv)",
    )
    p.add_argument("--time-scale", type=float, default=1.0, help="trace speed-up factor")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", default=None, help="write the summary as JSON to this file")
    p.add_argument("--records", default=None, help="write per-request records (CSV) here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_simulate)

    prof = sub.add_parser("profiles", help="inspect and export latency profiles")
    prof_sub = prof.add_subparsers(dest="profiles_command", metavar="COMMAND", required=True)
    exp = prof_sub.add_parser(
        "export", help="write the mlp.csv and attention.csv the simulator uses (Vidur format)"
    )
    exp.add_argument("--gpu", default="a100")
    exp.add_argument("--model", default="meta-llama/Llama-2-7b-hf")
    exp.add_argument("--tp", type=int, default=1)
    exp.add_argument("--attention", default="auto")
    exp.add_argument("--out", required=True, help="output folder")
    exp.set_defaults(handler=_export)


def _simulate(args: argparse.Namespace) -> int:
    from block.simulator import running

    return running.simulate_command(args)


def _export(args: argparse.Namespace) -> int:
    from block.simulator import running

    return running.export_command(args)
