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
        help="catalogue name or alias (e.g. meta-llama/Llama-2-7b-hf, llama-2-7b) or a path to "
        "a Hugging Face config.json (required)",
    )
    p.add_argument(
        "--tp", type=int, nargs="+", default=[1], help="tensor-parallel degrees (default 1)"
    )
    p.add_argument(
        "--out",
        type=Path,
        help="output directory, e.g. data/profiles/h100/meta-llama/Llama-2-7b-hf (required)",
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
    sub = p.add_subparsers(dest="profile_command", metavar="engine")
    _register_engine(sub)


def _register_engine(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    e = sub.add_parser(
        "engine",
        help="profile a running OpenAI-compatible engine from outside (no GPU tooling)",
        description=(
            "Drive a running engine through its OpenAI API with controlled work (decode batches "
            "over known KV lengths, prefills beside decodes; random token ids, so no prefix-cache "
            "hits), time its steps from the streamed tokens, fit Block's step model and write "
            "Vidur-format mlp.csv, attention.csv, overhead.json and meta.json into --out. Point "
            "BLOCK_PROFILES_DIR at the folder above <hardware>/<org>/<model>/ and the simulator, "
            "the sidecar and the engine twin load it like a GPU profile."
        ),
    )
    e.add_argument("--url", required=True, help="the engine's base URL, e.g. http://127.0.0.1:8000")
    e.add_argument(
        "--out", type=Path, required=True, help="output folder, e.g. profiles/cpu/block/tiny-llama3"
    )
    e.add_argument(
        "--model-config",
        required=True,
        help="the model's shape: a catalogue name, or a config.json (or its folder)",
    )
    e.add_argument("--served-model", default=None, help="model name to request (default: first)")
    e.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32],
        help="decode batch sizes to measure",
    )  # fmt: skip
    e.add_argument(
        "--prompt-lengths", type=int, nargs="+", default=[32, 512, 1536],
        help="prompt tokens (KV per sequence) of the decode probes",
    )  # fmt: skip
    e.add_argument(
        "--prefill-lengths", type=int, nargs="+", default=[16, 64, 128, 256, 512, 1024, 1536],
        help="prompt tokens of the prefill probes",
    )  # fmt: skip
    e.add_argument("--decode-tokens", type=int, default=24, help="tokens per decode probe")
    e.add_argument(
        "--max-num-batched-tokens", type=int, default=2048,
        help="the engine's token budget per step (vLLM's default 2048)",
    )  # fmt: skip
    e.add_argument(
        "--temperature", type=float, default=None,
        help="sampling temperature of the probes (default: the engine's; profile with the "
        "sampling your traffic uses: it changes the cost per sequence)",
    )  # fmt: skip
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--api-key", default=None, help="bearer token, if the engine wants one")
    e.set_defaults(handler=_handle_engine)


def _handle_engine(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from block import terminal
    from block.profiler import engine
    from block.simulator.models import get_model

    console = terminal.console(stderr=True)
    numbers = (*args.batch_sizes, *args.prompt_lengths, *args.prefill_lengths)
    if min(numbers) < 1 or args.decode_tokens < 4 or args.max_num_batched_tokens < 1:
        console.print("[red]error:[/red] sizes must be positive and --decode-tokens >= 4")
        return 2
    if not args.url.startswith(("http://", "https://")):
        console.print(f"[red]error:[/red] --url must be an http(s) URL, got {args.url!r}")
        return 2
    try:
        shape = get_model(args.model_config)
        req = engine.EngineProfileRequest(
            url=args.url.rstrip("/"),
            out_dir=args.out,
            shape=shape,
            model=args.served_model,
            batch_sizes=tuple(args.batch_sizes),
            prompt_lengths=tuple(args.prompt_lengths),
            prefill_lengths=tuple(args.prefill_lengths),
            decode_tokens=args.decode_tokens,
            max_num_batched_tokens=args.max_num_batched_tokens,
            seed=args.seed,
            api_key=args.api_key,
            temperature=args.temperature,
        )
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("profiling", total=1)

            def progress(label: str, i: int, n: int) -> None:
                bar.update(task, description=label, completed=i, total=n)

            result = engine.run(req, progress)
    except BlockError as e:
        console.print(f"[red]error:[/red] {e.detail}")
        return 2
    c = result.coefficients
    held = (
        "n/a" if result.held_out_error is None
        else f"{100 * result.held_out_error:.1f} % median, {100 * (result.held_out_max or 0):.1f} "
        "% worst of the held-back probes"
    )  # fmt: skip
    console.print(
        f"profiled {args.url} in {result.seconds:.0f} s: {result.steps} clean steps from "
        f"{result.probes} probes; step = {1e3 * c.constant_s:.2f} ms + "
        f"{1e6 * c.per_token_s:.1f} us/token + {1e6 * c.per_sequence_s:.1f} us/sequence + "
        f"{1e9 * c.per_decode_kv_token_s:.2f} ns/KV token + {1e12 * c.per_prefill_pair_s:.2f} "
        f"ps/prefill pair + {1e3 * c.per_prefill_chunk_s:.2f} ms/prefill; fit error "
        f"{100 * result.fit_error:.1f} % median, held-out {held}; "
        f"tables in {result.out_dir}"
    )
    return 0


def _check(args: argparse.Namespace) -> str | None:
    if args.model is None or args.out is None:
        return "--model and --out are required (or use `block profile engine`)"
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
