"""The standalone gateway: a `block gateway` Deployment, its Service, and the RBAC it needs.

`block gateway` is Envoy (carrying the bytes) and Block's endpoint picker (deciding) in one
container. The picker finds the replicas through the EndpointSlices of the engine Service (a
watch, hence the Role); Envoy's hosts are the pod IPs the engines' headless Service resolves to
(`--replicas-dns`). The picker's gRPC and admin ports and Envoy's admin port stay on loopback;
Envoy's listener routes `/healthz`, `/metrics`, `/v1/replicas` and `/v1/autoscaling/*` to the
picker's admin, so the Service's one port serves clients, probes, Prometheus and the operator's
autoscaler alike; the admin endpoints want the cluster's admin token (`secret_objects`). Envoy
writes its bootstrap under /tmp (an emptyDir: the root filesystem is read-only). Stateless:
`spec.scheduler.replicas` copies run side by side behind one Service.

The component keeps its first name, `scheduler` (objects `NAME-scheduler`, status
`schedulerReadyReplicas`): renaming would move the address clients already use.
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

COMPONENT = "scheduler"
# Envoy and the picker in one container: a little more than the picker alone.
SCHEDULER_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "384Mi"},
    "limits": {"memory": meta.BLOCK_MEMORY_LIMIT},
}
TERMINATION_GRACE_S = 30
# Envoy starts one worker per host core by default (it does not read the pod's CPU limit): on a
# large node that is dozens of idle workers with their own buffers. Two serve a request rate
# that one picker can decide; `--envoy-concurrency` in spec.scheduler.args overrides it.
ENVOY_WORKERS = 2


def scheduler_argv(
    cluster: meta.ClusterRef, spec: specs.BlockClusterSpec, settings: meta.RenderSettings
) -> list[str]:
    return [
        "--host", "0.0.0.0",
        "--port", str(meta.SCHEDULER_PORT),
        "--policy", spec.scheduler.policy,
        "--discover", "k8s",
        "--namespace", cluster.namespace,
        "--service", meta.child_name(cluster, engine_objects.COMPONENT),
        "--replicas-dns", engine_objects.replicas_dns(cluster, settings),
        "--envoy-concurrency", str(ENVOY_WORKERS),
        *secret_objects.argv(spec),
        *spec.scheduler.args,
    ]  # fmt: skip


def service_account(cluster: meta.ClusterRef) -> dict[str, Any]:
    return rbac_objects.service_account(cluster, COMPONENT)


def role(cluster: meta.ClusterRef) -> dict[str, Any]:
    return rbac_objects.role(cluster, COMPONENT)


def role_binding(cluster: meta.ClusterRef) -> dict[str, Any]:
    return rbac_objects.role_binding(cluster, COMPONENT)


def deployment(
    cluster: meta.ClusterRef,
    spec: specs.BlockClusterSpec,
    settings: meta.RenderSettings,
    config_hash: str,
) -> dict[str, Any]:
    container = {
        "name": "scheduler",
        "image": spec.scheduler.image or settings.block_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["block", "gateway"],
        "args": scheduler_argv(cluster, spec, settings),
        "ports": [{"name": "http", "containerPort": meta.SCHEDULER_PORT, "protocol": "TCP"}],
        "env": config_objects.env(),
        "resources": meta.resources(spec.scheduler.resources, SCHEDULER_RESOURCES),
        # Through Envoy to the picker's /healthz: ready only when both serve.
        "readinessProbe": meta.http_probe("/healthz", "http", 5, 3),
        "livenessProbe": meta.http_probe("/healthz", "http", 10, 6),
        "securityContext": meta.restricted_security_context(meta.BLOCK_UID),
        "volumeMounts": rbac_objects.volume_mounts(spec),
    }
    pod_spec = rbac_objects.pod_spec(cluster, spec, COMPONENT, container, TERMINATION_GRACE_S)
    return meta.deployment(cluster, COMPONENT, spec.scheduler.replicas, config_hash, pod_spec)


def service(cluster: meta.ClusterRef) -> dict[str, Any]:
    return meta.http_service(cluster, COMPONENT)


def endpoint(cluster: meta.ClusterRef) -> str:
    """The gateway's in-cluster URL, as reported in the status."""
    name = meta.child_name(cluster, COMPONENT)
    return f"http://{name}.{cluster.namespace}.svc:{meta.SERVICE_PORT}"
