"""What the simulated studies (burstiness, capacity, config-search, prediction) share: their
CLI error wrapper and the common start (console, output folder, cluster, policies, request
pool, remaining-length model)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from block.errors import BlockError

if TYPE_CHECKING:
    from rich.console import Console

    from block.experiments.clusters import ClusterSpec
    from block.experiments.simulating import RemainingLength
    from block.experiments.workload import Pool


def guarded(body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """`body(args)`, with a BlockError turned into a one-line message and exit code 2."""
    try:
        return body(args)
    except BlockError as e:
        print(f"error: {e.detail}")
        return 2


class Study(NamedTuple):
    console: Console
    out: Path
    spec: ClusterSpec
    labels: list[str]
    pool: Pool
    remaining: RemainingLength


def start(args: argparse.Namespace) -> Study:
    """The pieces from the shared arguments (cluster, `--policies`, `--lengths-from`, `--out`,
    `--quiet`); heavy imports stay here so that registering the commands stays light."""
    from block import terminal
    from block.experiments import clusters, simulating, workload

    spec = clusters.from_args(args)
    pool = workload.load_pool(spec.max_model_len, args.lengths_from)
    return Study(
        console=terminal.console(stderr=True, quiet=args.quiet),
        out=Path(args.out),
        spec=spec,
        labels=[x.strip() for x in args.policies.split(",") if x.strip()],
        pool=pool,
        remaining=simulating.RemainingLength([c.output_tokens for c in pool.conversations]),
    )
