"""`block bench`: replay a workload against any OpenAI-compatible endpoint and measure it.

    block bench --url http://127.0.0.1:8080 --workload sharegpt --qps 4 --requests 200 \\
        --out out/bench

Writes `records.csv` (one row per request) and `summary.json` (the keys of `block simulate`,
measured at the client) into `--out`. Ctrl-C stops sending, lets in-flight requests finish for
`--grace` seconds, writes what finished and exits with 130.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="open-loop load generator for an OpenAI-compatible endpoint",
        description=(__doc__ or "").strip().splitlines()[0],
    )
    add_arguments(p)
    p.set_defaults(handler=_handle)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="base URL of the endpoint (without /v1)")
    p.add_argument("--model", default=None, help="model to ask for (default: first listed)")
    p.add_argument(
        "--workload", default="sharegpt", help="sharegpt (real text), azure-conv or arxiv sizes"
    )
    p.add_argument(
        "--trace",
        default=None,
        help="CSV trace (Azure or Vidur columns) to replay: a file, or the name of one that "
        "ships with Block (azure_llm_2023_conv.csv, arxiv_summarization_llama2.csv)",
    )
    p.add_argument("--qps", type=float, default=None, help="Poisson/Gamma rate (req/s)")
    p.add_argument("--cv", type=float, default=1.0, help="gap variation: 1 Poisson, >1 bursty")
    p.add_argument("--time-scale", type=float, default=1.0, help="trace speed-up factor")
    p.add_argument("--requests", type=int, default=200, help="requests to send")
    p.add_argument("--max-tokens-cap", type=int, default=None, help="cap max_tokens at this")
    p.add_argument("--max-model-len", type=int, default=4096, help="drop prompts that do not fit")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")
    p.add_argument("--grace", type=float, default=5.0, help="seconds in-flight get after a stop")
    p.add_argument(
        "--no-ignore-eos",
        action="store_true",
        help="do not send vLLM's ignore_eos (for servers that reject unknown fields)",
    )
    p.add_argument("--api-key", default=None, help="bearer token for the endpoint")
    p.add_argument("--out", default="out/bench", help="folder for records.csv and summary.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _handle(args: argparse.Namespace) -> int:
    from block.experiments import benching

    return benching.main(args)
