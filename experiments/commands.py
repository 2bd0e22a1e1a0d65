"""`block experiment <name>`: argument parsing only; each experiment module does the work."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

# name -> module exposing add_arguments(parser) and run(args) -> int. Add yours here.
EXPERIMENTS: dict[str, str] = {
    "autoscale": "block.experiments.autoscale",
    "capacity": "block.experiments.capacity",
    "prediction": "block.experiments.prediction",
    "config-search": "block.experiments.config_search",
    "burstiness": "block.experiments.burstiness",
    "live": "block.experiments.live",
    "prefix": "block.experiments.prefix",
}


def register(sub: Any) -> None:
    p = sub.add_parser("experiment", help="run one of Block's experiments (writes CSV/PNG/md)")
    exp_sub = p.add_subparsers(dest="experiment", metavar="NAME", required=True)
    for name, module_name in EXPERIMENTS.items():
        module = importlib.import_module(module_name)
        e = exp_sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        e.add_argument("--out", default=f"out/{name}", help="folder for CSV, plots and tables")
        module.add_arguments(e)
        e.set_defaults(handler=_runner(module_name))


def _runner(module_name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        return int(importlib.import_module(module_name).run(args))

    return run
