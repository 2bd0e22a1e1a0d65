"""The `block` command: one entry point, one sub-command per job.

Each component registers its sub-commands from a light `commands` module (argument parsing only;
heavy imports happen inside the handlers) so `block --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from block import __version__

# Modules that expose `register(subparsers) -> None`; each adds its own sub-commands.
COMMAND_MODULES: tuple[str, ...] = (
    "block.demo",
    "block.experiments.commands",
    "block.experiments.bench",
    "block.simulator.commands",
    "block.predictor.commands",
    "block.scheduler.commands",
    "block.estimator.commands",
    "block.operator.commands",
    "block.profiler.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="block", description="Route LLM requests by predicted latency."
    )
    parser.add_argument("--version", action="version", version=f"block {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real missing dependency, not an absent component
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        result = handler(args)
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
