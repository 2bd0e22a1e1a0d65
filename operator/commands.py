"""`block operator ...`: run the operator, print the CRD, render a BlockCluster's objects.

Light on purpose (argparse only): kopf and the Kubernetes client load inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "operator",
        help="Kubernetes operator for BlockCluster resources",
        description="Reconcile BlockCluster resources into engines, predictors and a gateway.",
    )
    sub = parser.add_subparsers(dest="operator_command", metavar="ACTION", required=True)

    run = sub.add_parser("run", help="run the operator against the current cluster")
    run.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch only this namespace (repeatable; default: all namespaces)",
    )
    run.add_argument("--image", help="Block image for predictors, gateways and engine twins")
    run.add_argument("--cluster-domain", help="the cluster's DNS domain (cluster.local)")
    run.add_argument("--liveness-port", type=int, help="serve /healthz on this port")
    run.add_argument("--liveness-host", help="address of /healthz (default: all interfaces)")
    run.add_argument("--resync-interval", type=float, metavar="S", help="resync period, s")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    run.set_defaults(handler=_run)

    crd = sub.add_parser("crd", help="print the BlockCluster CustomResourceDefinition (YAML)")
    crd.set_defaults(handler=_crd)

    render = sub.add_parser(
        "render", help="print the objects a BlockCluster becomes (YAML; no cluster needed)"
    )
    render.add_argument("file", help="a BlockCluster manifest (YAML), '-' for stdin")
    render.add_argument("--image", help="Block image (default: the operator's default)")
    render.add_argument("--cluster-domain", help="the cluster's DNS domain (cluster.local)")
    render.add_argument(
        "--inference-pool",
        action="store_true",
        help="as in a cluster with the InferencePool API: add the endpoint picker and the pool",
    )
    render.set_defaults(handler=_render)


def _run(args: argparse.Namespace) -> int:
    import pydantic

    from block import logs
    from block.operator import running
    from block.operator.settings import OperatorSettings

    overrides: dict[str, Any] = {
        key: value
        for key, value in (
            ("namespaces", tuple(args.namespaces) if args.namespaces else None),
            ("image", args.image),
            ("cluster_domain", args.cluster_domain),
            ("liveness_port", args.liveness_port),
            ("liveness_host", args.liveness_host),
            ("resync_interval_s", args.resync_interval),
            ("log_level", args.log_level),
        )
        if value is not None
    }
    try:
        settings = OperatorSettings(**overrides)
    except pydantic.ValidationError as e:
        print(f"block operator run: invalid settings: {e}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, json_format=args.log_json)
    return running.run(settings)


def _crd(args: argparse.Namespace) -> int:
    import yaml

    from block.operator.blockcluster import crd_objects

    sys.stdout.write(yaml.safe_dump(crd_objects.crd(), sort_keys=False))
    return 0


def _render(args: argparse.Namespace) -> int:
    import pydantic
    import yaml

    from block.operator.blockcluster import children, meta, specs
    from block.operator.settings import OperatorSettings

    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file).read()  # noqa: SIM115
        body = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as e:
        print(f"block operator render: cannot read {args.file}: {e}", file=sys.stderr)
        return 2
    if not isinstance(body, dict) or body.get("kind") != specs.KIND:
        print(f"block operator render: {args.file} is not a {specs.KIND}", file=sys.stderr)
        return 2
    metadata = body.get("metadata") or {}
    cluster = meta.ClusterRef(
        name=metadata.get("name", "example"),
        namespace=metadata.get("namespace", "default"),
        # Not a real object yet: the apiserver assigns the uid the owner references will carry.
        uid=metadata.get("uid", "00000000-0000-0000-0000-000000000000"),
    )
    try:
        spec = specs.parse_spec(body.get("spec"))
    except pydantic.ValidationError as e:
        print(f"block operator render: invalid spec: {e}", file=sys.stderr)
        return 2
    defaults = OperatorSettings()
    settings = meta.RenderSettings(
        block_image=args.image or defaults.image,
        cluster_domain=args.cluster_domain or defaults.cluster_domain,
    )
    objects = children.render(cluster, spec, settings, inference_pool=args.inference_pool)
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
    return 0
