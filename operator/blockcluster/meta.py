"""Names, labels and owner references shared by the child renderers (pure, no I/O).

Every child of a BlockCluster `NAME` is named `NAME-<part>`, carries the standard
`app.kubernetes.io/*` labels plus `block.dev/cluster: NAME` (how the operator finds the owner of
a child event), and is owned by the BlockCluster (controller owner reference), so the
controller-manager's garbage collector removes it with its owner.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from block.operator.blockcluster import quantities, specs

CLUSTER_LABEL = "block.dev/cluster"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "block-operator"
CONFIG_HASH_ANNOTATION = "block.dev/config-hash"

# Ports inside the pods. The predictor sidecar fronts the engine, so the engine Services point
# at the predictor; the engine itself listens on its own port for the sidecar and the probes.
ENGINE_PORT = 8001
PREDICTOR_PORT = 8000
SCHEDULER_PORT = 8080  # the standalone gateway's listener (Envoy)
SERVICE_PORT = 80
# The endpoint picker (`block epp`): Envoy's ext_proc gRPC API, which a Gateway API
# implementation reaches through the InferencePool's endpointPickerRef (9002 is the port the
# Gateway API Inference Extension's examples use), and its HTTP admin port (metrics, /healthz,
# /v1/replicas, the autoscaling API).
EPP_GRPC_PORT = 9002
EPP_ADMIN_PORT = 9090


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterRef:
    """The identity of the BlockCluster being rendered (from its metadata)."""

    name: str
    namespace: str
    uid: str
    generation: int = 1

    @classmethod
    def from_body(cls, body: Any) -> ClusterRef:
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
            generation=int(meta.get("generation") or 1),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class RenderSettings:
    """Operator-wide inputs to rendering: the Block image that runs Block's own processes, and
    the cluster's DNS domain (Envoy resolves the engines' headless Service by its full name)."""

    block_image: str
    image_pull_policy: str = "IfNotPresent"
    cluster_domain: str = "cluster.local"


def child_name(cluster: ClusterRef, part: str) -> str:
    return f"{cluster.name}-{part}"


def selector_labels(cluster: ClusterRef, component: str) -> dict[str, str]:
    """Labels a Deployment selects its pods by (immutable once created: keep them few)."""
    return {CLUSTER_LABEL: cluster.name, COMPONENT_LABEL: component}


def labels(cluster: ClusterRef, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "block",
        "app.kubernetes.io/instance": cluster.name,
        "app.kubernetes.io/part-of": "block",
        MANAGED_BY_LABEL: MANAGED_BY,
        **selector_labels(cluster, component),
    }


def selector_string(cluster: ClusterRef, component: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(cluster, component).items()))


def owner_reference(cluster: ClusterRef) -> dict[str, Any]:
    return {
        "apiVersion": specs.API_VERSION,
        "kind": specs.KIND,
        "name": cluster.name,
        "uid": cluster.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(cluster: ClusterRef, part: str, component: str) -> dict[str, Any]:
    return {
        "name": child_name(cluster, part),
        "namespace": cluster.namespace,
        "labels": labels(cluster, component),
        "ownerReferences": [owner_reference(cluster)],
    }


# The memory limit of each of Block's own containers unless the spec sets one: a process that
# grows (a flood of huge prompts, a leak) is restarted by the kubelet instead of starving the
# node. About six times what each uses when idle (150 MB for the twin, the sidecar, the picker).
BLOCK_MEMORY_LIMIT = "1Gi"


def resources(raw: specs.Resources, defaults: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Container resources: the spec's values over Block's defaults, as strings. A default limit
    below the spec's own request for that resource is raised to the request (the apiserver
    refuses a request above its limit)."""
    requests = {**defaults.get("requests", {}), **{k: str(v) for k, v in raw.requests.items()}}
    limits = {**defaults.get("limits", {}), **{k: str(v) for k, v in raw.limits.items()}}
    for name, default in defaults.get("limits", {}).items():
        wanted = raw.requests.get(name)
        if name in raw.limits or wanted is None:
            continue
        if quantities.parse(wanted) > quantities.parse(default):
            limits[name] = str(wanted)
    out: dict[str, Any] = {}
    for part, merged in (("requests", requests), ("limits", limits)):
        if merged:
            out[part] = merged
    return out


def restricted_security_context(run_as_user: int) -> dict[str, Any]:
    """What Pod Security's `restricted` profile asks of a container running Block's image."""
    return {
        "runAsNonRoot": True,
        "runAsUser": run_as_user,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def http_probe(path: str, port: str, period_s: int, failure_threshold: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period_s,
        "timeoutSeconds": 2,
        "failureThreshold": failure_threshold,
    }


def grpc_probe(port: int, service: str, period_s: int, failure_threshold: int) -> dict[str, Any]:
    """The kubelet's gRPC health check (a number, not a port name: the API takes no names)."""
    return {
        "grpc": {"port": port, "service": service},
        "periodSeconds": period_s,
        "timeoutSeconds": 2,
        "failureThreshold": failure_threshold,
    }


# The non-root user of Block's image (Dockerfile: useradd --uid 10001 block).
BLOCK_UID = 10001


def deployment(
    cluster: ClusterRef,
    component: str,
    replicas: int,
    config_hash: str,
    pod_spec: dict[str, Any],
) -> dict[str, Any]:
    """A component's Deployment: rolled when its config changes, never fewer serving replicas
    than asked for during a rollout."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(cluster, component, component),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(cluster, component)},
            "revisionHistoryLimit": 3,
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": labels(cluster, component),
                    "annotations": {CONFIG_HASH_ANNOTATION: config_hash},
                },
                "spec": pod_spec,
            },
        },
    }


def http_service(cluster: ClusterRef, component: str) -> dict[str, Any]:
    """A ClusterIP Service in front of a component's `http` port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(cluster, component, component),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(cluster, component),
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }
