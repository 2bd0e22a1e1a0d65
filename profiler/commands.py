"""`block profile`: argument parsing only; torch is imported inside the handler."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from block.errors import BlockError
from block.profiler.grids import PRESETS

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "profile",
        help="measure a model's operator tables on this machine's GPU",
        description=(
            "Time one transformer layer's operators (random bf16 weights, shapes from the "
            "catalogue or a config file; nothing is downloaded) with CUDA events and write "
            "Vidur-format mlp.csv and attention.csv plus meta.json into --out. Needs a CUDA GPU "
            "and the gpu extra (pip install 'block-llm[gpu]')."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        help="catalogue name or alias (e.g. meta-llama/Llama-2-7b-hf, llama-2-7b) or a path to "
        "a Hugging Face config.json",
    )
    p.add_argument(
        "--tp", type=int, nargs="+", default=[1], help="tensor-parallel degrees (default 1)"
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output directory, e.g. data/profiles/h100/meta-llama/Llama-2-7b-hf",
    )
    p.add_argument(
        "--grid",
        choices=PRESETS,
        default="modest",
        help="attention grid: modest (minutes per model) or full (Vidur's density)",
    )
    p.add_argument("--max-seq-len", type=int, default=4096, help="longest context to profile")
    p.add_argument("--max-tokens", type=int, default=4096, help="largest MLP batch in tokens")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per point")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per point")
    p.add_argument("--only", choices=("mlp", "attention"), help="profile one table only")
    p.add_argument(
        "--no-compile",
        action="store_true",
        help="time eager elementwise ops instead of torch.compile-fused ones",
    )
    p.add_argument(
        "--block-size", type=int, default=16, help="KV block size written in attention.csv"
    )
    p.set_defaults(handler=_handle)


def _check(args: argparse.Namespace) -> str | None:
    for name in ("max_seq_len", "max_tokens", "repeats", "block_size"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1"
    if args.warmup < 0:
        return "--warmup must be >= 0"
    if any(tp < 1 for tp in args.tp):
        return "--tp values must be at least 1"
    return None


def _handle(args: argparse.Namespace) -> int:
    problem = _check(args)
    if problem:
        sys.stderr.write(f"block profile: {problem}\n")
        return 2
    if not logging.getLogger().handlers:
        from block import logs

        logs.setup()
    from block.profiler import runner  # imports torch lazily, inside run()

    request = runner.ProfileRequest(
        model=args.model,
        tensor_parallel=tuple(args.tp),
        out_dir=args.out,
        grid=args.grid,
        max_seq_len=args.max_seq_len,
        max_tokens=args.max_tokens,
        warmup=args.warmup,
        repeats=args.repeats,
        use_compile=not args.no_compile,
        block_size=args.block_size,
        only=args.only,
    )
    try:
        runner.run(request)
    except BlockError as e:
        sys.stderr.write(f"block profile: {e.detail}\n")
        return 2
    return 0
