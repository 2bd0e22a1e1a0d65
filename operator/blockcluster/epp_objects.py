"""The endpoint picker for a Gateway API implementation: a `block epp` Deployment and Service.

Rendered only where the cluster serves the InferencePool API (`pool_objects`): the gateway
(Istio, kgateway, Envoy Gateway, GKE, ...) reaches the picker through the InferencePool's
`endpointPickerRef` and asks it, over Envoy's ext_proc gRPC API, which replica serves each
request. The picker discovers the replicas as the standalone gateway does, from the engine
Service's EndpointSlices, with a ServiceAccount of its own (`rbac_objects`). Its routing
settings and credentials are the gateway's (`spec.scheduler`: policy, image, replicas,
resources, args, API keys; the cluster's admin token), so both front doors route and guard
alike.
"""

from __future__ import annotations

from typing import Any

from block.operator.blockcluster import (
    config_objects,
    engine_objects,
    meta,
    rbac_objects,
    secret_objects,
    specs,
)

COMPONENT = "epp"
EPP_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"memory": meta.BLOCK_MEMORY_LIMIT},
}
TERMINATION_GRACE_S = 30
# The gRPC health services the endpoint-picker protocol names (what `block epp` serves).
LIVENESS_SERVICE = "liveness"
READINESS_SERVICE = "readiness"
# `block gateway` flags that `block epp` does not take (they configure Envoy or its listener),
# each with its value. They are dropped from spec.scheduler.args for the picker; a unit test
# checks this list against both commands' parsers.
GATEWAY_ONLY_FLAGS = frozenset(
    {"--port", "--envoy-admin-port", "--envoy-concurrency", "--picker-timeout-ms", "--replicas-dns"}
)


def picker_args(args: list[str]) -> list[str]:
    """`spec.scheduler.args` without the gateway-only flags (`--flag value` or `--flag=value`)."""
    out: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        name, eq, _ = arg.partition("=")
        if name in GATEWAY_ONLY_FLAGS:
            skip_value = not eq
            continue
        out.append(arg)
    return out


def epp_argv(cluster: meta.ClusterRef, spec: specs.BlockClusterSpec) -> list[str]:
    return [
        "--host", "0.0.0.0",
        "--grpc-port", str(meta.EPP_GRPC_PORT),
        "--admin-port", str(meta.EPP_ADMIN_PORT),
        "--policy", spec.scheduler.policy,
        "--discover", "k8s",
        "--namespace", cluster.namespace,
        "--service", meta.child_name(cluster, engine_objects.COMPONENT),
        *secret_objects.argv(spec),
        *picker_args(spec.scheduler.args),
    ]  # fmt: skip


def deployment(
    cluster: meta.ClusterRef,
    spec: specs.BlockClusterSpec,
    settings: meta.RenderSettings,
    config_hash: str,
) -> dict[str, Any]:
    container = {
        "name": "epp",
        "image": spec.scheduler.image or settings.block_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["block", "epp"],
        "args": epp_argv(cluster, spec),
        "ports": [
            {"name": "grpc", "containerPort": meta.EPP_GRPC_PORT, "protocol": "TCP"},
            {"name": "admin", "containerPort": meta.EPP_ADMIN_PORT, "protocol": "TCP"},
        ],
        "env": config_objects.env(),
        "resources": meta.resources(spec.scheduler.resources, EPP_RESOURCES),
        "readinessProbe": meta.grpc_probe(meta.EPP_GRPC_PORT, READINESS_SERVICE, 5, 3),
        "livenessProbe": meta.grpc_probe(meta.EPP_GRPC_PORT, LIVENESS_SERVICE, 10, 6),
        "securityContext": meta.restricted_security_context(meta.BLOCK_UID),
        "volumeMounts": rbac_objects.volume_mounts(spec),
    }
    pod_spec = rbac_objects.pod_spec(cluster, spec, COMPONENT, container, TERMINATION_GRACE_S)
    return meta.deployment(cluster, COMPONENT, spec.scheduler.replicas, config_hash, pod_spec)


def service(cluster: meta.ClusterRef) -> dict[str, Any]:
    """The address the InferencePool names: gRPC for the gateway, admin for Prometheus and the
    autoscaling API. `appProtocol: http2` tells the gateway implementations (Istio, GKE,
    kgateway, Envoy Gateway) to speak HTTP/2 to the gRPC port without TLS."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.metadata(cluster, COMPONENT, COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": meta.selector_labels(cluster, COMPONENT),
            "ports": [
                {
                    "name": "grpc",
                    "port": meta.EPP_GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "http2",
                },
                {
                    "name": "admin",
                    "port": meta.EPP_ADMIN_PORT,
                    "targetPort": "admin",
                    "protocol": "TCP",
                    "appProtocol": "http",
                },
            ],
        },
    }


def objects(
    cluster: meta.ClusterRef,
    spec: specs.BlockClusterSpec,
    settings: meta.RenderSettings,
    config_hash: str,
) -> list[dict[str, Any]]:
    """The picker's children in the order they are applied: identity, Service, Deployment."""
    return [
        *rbac_objects.objects(cluster, COMPONENT),
        service(cluster),
        deployment(cluster, spec, settings, config_hash),
    ]


def grpc_address(cluster: meta.ClusterRef) -> str:
    """The picker's in-cluster gRPC address, as reported in the status."""
    name = meta.child_name(cluster, COMPONENT)
    return f"{name}.{cluster.namespace}.svc:{meta.EPP_GRPC_PORT}"
