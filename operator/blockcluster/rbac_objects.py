"""The identity of a routing component: ServiceAccount, Role and RoleBinding, and the pod it
runs in (pure).

The standalone gateway and the endpoint picker both find the engine replicas by watching the
EndpointSlices of the engine Service, so each gets its own ServiceAccount whose Role may read
EndpointSlices in its own namespace and nothing else. One account per component: revoking or
auditing one never touches the other.
"""

from __future__ import annotations

from typing import Any

from block.operator.blockcluster import config_objects, meta, secret_objects, specs

ENDPOINTSLICE_READER_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["get", "list", "watch"],
    }
]


def service_account(cluster: meta.ClusterRef, component: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta.metadata(cluster, component, component),
        "automountServiceAccountToken": True,
    }


def role(cluster: meta.ClusterRef, component: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta.metadata(cluster, component, component),
        "rules": [dict(rule) for rule in ENDPOINTSLICE_READER_RULES],
    }


def role_binding(cluster: meta.ClusterRef, component: str) -> dict[str, Any]:
    name = meta.child_name(cluster, component)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta.metadata(cluster, component, component),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": cluster.namespace}],
    }


def objects(cluster: meta.ClusterRef, component: str) -> list[dict[str, Any]]:
    """Account, Role and binding, in the order they are applied."""
    return [
        service_account(cluster, component),
        role(cluster, component),
        role_binding(cluster, component),
    ]


def volume_mounts(spec: specs.BlockClusterSpec) -> list[dict[str, Any]]:
    """What a routing container mounts: the cluster config, a writable /tmp, its Secrets."""
    return [
        config_objects.volume_mount(),
        {"name": "tmp", "mountPath": "/tmp"},
        *secret_objects.volume_mounts(spec),
    ]


def pod_spec(
    cluster: meta.ClusterRef,
    spec: specs.BlockClusterSpec,
    component: str,
    container: dict[str, Any],
    grace_s: int,
) -> dict[str, Any]:
    """The pod of a routing component: its own account, its one container, the volumes
    `volume_mounts` names."""
    return {
        "serviceAccountName": meta.child_name(cluster, component),
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": grace_s,
        "securityContext": secret_objects.pod_security_context(),
        "containers": [container],
        "volumes": [
            config_objects.pod_volume(cluster),
            {"name": "tmp", "emptyDir": {}},
            *secret_objects.volumes(cluster, spec),
        ],
    }
