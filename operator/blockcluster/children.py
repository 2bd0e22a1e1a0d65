"""Every child object of one BlockCluster, in the order they are applied (pure)."""

from __future__ import annotations

from typing import Any

from block.operator.blockcluster import (
    config_objects,
    engine_objects,
    meta,
    scheduler_objects,
    specs,
)

# (apiVersion, kind) of every child the operator owns; the RBAC rules and watches follow this.
CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
)


def render(
    cluster: meta.ClusterRef, spec: specs.BlockClusterSpec, settings: meta.RenderSettings
) -> list[dict[str, Any]]:
    """Children in dependency order: config and identity before the pods that use them."""
    config_map = config_objects.config_map(cluster, spec)
    config_hash = config_objects.config_hash(config_map["data"])
    return [
        config_map,
        scheduler_objects.service_account(cluster),
        scheduler_objects.role(cluster),
        scheduler_objects.role_binding(cluster),
        engine_objects.service(cluster),
        engine_objects.deployment(cluster, spec, settings, config_hash),
        scheduler_objects.service(cluster),
        scheduler_objects.deployment(cluster, spec, settings, config_hash),
    ]
