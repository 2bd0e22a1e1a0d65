"""The gateway: `block scheduler` Deployment, its Service, and the RBAC it needs.

The gateway finds engine replicas through the EndpointSlices of the engine Service (a watch),
so it gets a ServiceAccount whose Role may read EndpointSlices in its own namespace and nothing
else. It is stateless: `spec.scheduler.replicas` copies run side by side behind one Service.
"""

from __future__ import annotations

from typing import Any

from block.operator.blockcluster import config_objects, meta, specs

COMPONENT = "scheduler"
SCHEDULER_RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}}
TERMINATION_GRACE_S = 30


def scheduler_argv(cluster: meta.ClusterRef, spec: specs.BlockClusterSpec) -> list[str]:
    return [
        "--host", "0.0.0.0",
        "--port", str(meta.SCHEDULER_PORT),
        "--policy", spec.scheduler.policy,
        "--discover", "k8s",
        "--namespace", cluster.namespace,
        "--service", meta.child_name(cluster, "engine"),
        *spec.scheduler.args,
    ]  # fmt: skip


def service_account(cluster: meta.ClusterRef) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta.metadata(cluster, COMPONENT, COMPONENT),
        "automountServiceAccountToken": True,
    }


def role(cluster: meta.ClusterRef) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta.metadata(cluster, COMPONENT, COMPONENT),
        "rules": [
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["get", "list", "watch"],
            }
        ],
    }


def role_binding(cluster: meta.ClusterRef) -> dict[str, Any]:
    name = meta.child_name(cluster, COMPONENT)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta.metadata(cluster, COMPONENT, COMPONENT),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": cluster.namespace}],
    }


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
        "command": ["block", "scheduler"],
        "args": scheduler_argv(cluster, spec),
        "ports": [{"name": "http", "containerPort": meta.SCHEDULER_PORT, "protocol": "TCP"}],
        "env": config_objects.env(),
        "resources": meta.resources(spec.scheduler.resources, SCHEDULER_RESOURCES),
        "readinessProbe": meta.http_probe("/healthz", "http", 5, 3),
        "livenessProbe": meta.http_probe("/healthz", "http", 10, 6),
        "securityContext": meta.restricted_security_context(meta.BLOCK_UID),
        "volumeMounts": [config_objects.volume_mount(), {"name": "tmp", "mountPath": "/tmp"}],
    }
    pod_spec = {
        "serviceAccountName": meta.child_name(cluster, COMPONENT),
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        "containers": [container],
        "volumes": [config_objects.pod_volume(cluster), {"name": "tmp", "emptyDir": {}}],
    }
    return meta.deployment(cluster, COMPONENT, spec.scheduler.replicas, config_hash, pod_spec)


def service(cluster: meta.ClusterRef) -> dict[str, Any]:
    return meta.http_service(cluster, COMPONENT)


def endpoint(cluster: meta.ClusterRef) -> str:
    """The gateway's in-cluster URL, as reported in the status."""
    name = meta.child_name(cluster, COMPONENT)
    return f"http://{name}.{cluster.namespace}.svc:{meta.SERVICE_PORT}"
