"""The identity of a routing component: ServiceAccount, Role and RoleBinding (pure).

The standalone gateway and the endpoint picker both find the engine replicas by watching the
EndpointSlices of the engine Service, so each gets its own ServiceAccount whose Role may read
EndpointSlices in its own namespace and nothing else. One account per component: revoking or
auditing one never touches the other.
"""

from __future__ import annotations

from typing import Any

from block.operator.blockcluster import meta

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
