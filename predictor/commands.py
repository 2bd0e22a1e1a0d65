"""`block engine` (the engine twin) and `block predictor` (the sidecar): argument parsing only.

Flags override the `BLOCK_ENGINE_*` / `BLOCK_PREDICTOR_*` environment, which overrides the
defaults documented in `block.predictor.settings`. Unset flags stay None so they do not mask
the environment.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from aiohttp import web

    from block.predictor.settings import EngineSettings, PredictorSettings

_Settings = TypeVar("_Settings", "EngineSettings", "PredictorSettings")

# Flag name -> settings field, for flags whose names differ from the fields.
_RENAMES = {"chunk_size": "max_num_batched_tokens"}


def _replica_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="listen port")
    p.add_argument(
        "--gpu",
        default=None,
        help="hardware profile: a100, h100, or a folder on BLOCK_PROFILES_DIR (default a100)",
    )
    p.add_argument("--model", default=None, help="model (default meta-llama/Llama-2-7b-hf)")
    p.add_argument("--tp", type=int, default=None, help="tensor-parallel degree (default 1)")
    p.add_argument("--served-model-name", default=None, help="name clients use (default: model)")
    p.add_argument("--scheduler", choices=("vllm", "sarathi"), default=None)
    p.add_argument(
        "--max-num-batched-tokens",
        "--chunk-size",
        dest="max_num_batched_tokens",
        type=int,
        default=None,
        help="the engine's token budget per step (default 2048)",
    )
    p.add_argument("--max-num-seqs", type=int, default=None, help="batch cap (default 256)")
    p.add_argument(
        "--num-blocks",
        type=int,
        default=None,
        help="KV-cache blocks (default: engine twin from GPU memory; sidecar from the engine)",
    )
    p.add_argument("--block-size", type=int, default=None, help="tokens per KV block (16)")
    p.add_argument(
        "--enable-prefix-caching", dest="enable_prefix_caching", action="store_const",
        const=True, default=None, help="the engine caches prompt prefixes (vLLM's default)",
    )  # fmt: skip
    p.add_argument(
        "--no-enable-prefix-caching", dest="enable_prefix_caching", action="store_const",
        const=False, default=None, help="the engine runs without automatic prefix caching",
    )  # fmt: skip
    p.add_argument("--max-model-len", type=int, default=None, help="context (default: model's)")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default INFO)")


def _overrides(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in ("command", "handler", *skip) or value is None:
            continue
        out[_RENAMES.get(key, key)] = value
    return out


def register(sub: Any) -> None:
    eng = sub.add_parser(
        "engine",
        help="run the engine twin: an OpenAI-compatible server timed by the simulator",
        description="An OpenAI-compatible server whose timing comes from the simulator in "
        "real time, with vLLM's /metrics. A stand-in for vLLM where no GPU exists.",
    )
    _replica_flags(eng)
    eng.add_argument(
        "--noise-sigma", type=float, default=None, help="lognormal sigma of step times (0)"
    )
    eng.add_argument("--bias", type=float, default=None, help="step-time factor vs profile (1)")
    eng.add_argument("--seed", type=int, default=None, help="seed of noise and lengths (0)")
    eng.set_defaults(handler=_engine)

    pred = sub.add_parser(
        "predictor",
        help="run the predictor sidecar in front of one engine",
        description="Proxies the OpenAI API to the engine, keeps a live twin of its queue and "
        "answers POST /v1/predict.",
    )
    _replica_flags(pred)
    pred.add_argument("--engine-url", default=None, help="engine base URL (http://127.0.0.1:8001)")
    pred.add_argument(
        "--reconcile-interval", dest="reconcile_interval_s", type=float, default=None,
        help="seconds between scrapes of the engine's /metrics (1.0)",
    )  # fmt: skip
    pred.add_argument(
        "--sync-interval", dest="sync_interval_s", type=float, default=None,
        help="seconds between re-syncs of the twin's progress with streamed tokens (0.05)",
    )  # fmt: skip
    pred.add_argument(
        "--read-timeout", dest="read_timeout_s", type=float, default=None,
        help="longest silence from the engine before a request fails (600 s)",
    )  # fmt: skip
    pred.add_argument(
        "--prior-output-tokens", type=int, default=None,
        help="length assumed without an x-block-output-tokens estimate (default: ShareGPT mean)",
    )  # fmt: skip
    pred.add_argument(
        "--no-trust-ignore-eos", dest="trust_ignore_eos", action="store_const", const=False,
        default=None, help="do not treat max_tokens with ignore_eos as the known length",
    )  # fmt: skip
    pred.add_argument(
        "--no-calibrate", dest="calibrate", action="store_const", const=False, default=None,
        help="do not refit the step-time model to the engine's observed steps (the profile only)",
    )  # fmt: skip
    pred.set_defaults(handler=_predictor)


def _settings_error(e: Exception) -> int:
    import sys

    from pydantic import ValidationError

    from block.wire.openai import validation_message

    msg = validation_message(e) if isinstance(e, ValidationError) else str(e)
    print(f"block: invalid settings: {msg}", file=sys.stderr)
    return 2


def _serve(
    args: argparse.Namespace,
    settings_type: type[_Settings],
    create_app: Callable[[_Settings], web.Application],
) -> int:
    """Settings from flags and environment, then serve the app; bad settings exit 2."""
    from pydantic import ValidationError

    from block import logs
    from block.errors import ConfigError
    from block.predictor.serving import run

    try:
        settings = settings_type(**_overrides(args))
    except ValidationError as e:
        return _settings_error(e)
    logs.setup(settings.log_level)
    try:
        return run(create_app(settings), settings.host, settings.port)
    except ConfigError as e:
        return _settings_error(e)


def _engine(args: argparse.Namespace) -> int:
    from block.predictor.engine import create_engine_app
    from block.predictor.settings import EngineSettings

    return _serve(args, EngineSettings, create_engine_app)


def _predictor(args: argparse.Namespace) -> int:
    from block.predictor.service import create_app
    from block.predictor.settings import PredictorSettings

    return _serve(args, PredictorSettings, create_app)
