"""Every child object of one BlockCluster, in the order they are applied (pure)."""

from __future__ import annotations

from typing import Any

from block.operator.blockcluster import (
    config_objects,
    engine_objects,
    epp_objects,
    meta,
    network_objects,
    pool_objects,
    scheduler_objects,
    specs,
)

# (apiVersion, kind) of every child the operator owns; the RBAC rules and watches follow this.
CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    (network_objects.API_VERSION, network_objects.KIND),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    (pool_objects.API_VERSION, pool_objects.KIND),
)


def render(
    cluster: meta.ClusterRef,
    spec: specs.BlockClusterSpec,
    settings: meta.RenderSettings,
    inference_pool: bool = False,
) -> list[dict[str, Any]]:
    """Children in dependency order: config, identity and network policies before the pods
    that use them (the admin-token Secret is not among them: `reconciling` creates it once).

    Always the engines and the standalone gateway (the front door that needs nothing else);
    with `inference_pool` (the cluster serves the InferencePool API) also the endpoint picker
    and the pool a Gateway API implementation routes to, last, so that a pool that cannot be
    applied never holds back the rest.
    """
    config_map = config_objects.config_map(cluster, spec)
    config_hash = config_objects.config_hash(config_map["data"])
    objects = [
        config_map,
        scheduler_objects.service_account(cluster),
        scheduler_objects.role(cluster),
        scheduler_objects.role_binding(cluster),
        network_objects.engine_policy(cluster, spec),
        network_objects.scheduler_policy(cluster, spec),
        engine_objects.service(cluster),
        engine_objects.headless_service(cluster),
        engine_objects.deployment(cluster, spec, settings, config_hash),
        scheduler_objects.service(cluster),
        scheduler_objects.deployment(cluster, spec, settings, config_hash),
    ]
    if inference_pool:
        objects += [
            network_objects.epp_policy(cluster, spec),
            *epp_objects.objects(cluster, spec, settings, config_hash),
            pool_objects.inference_pool(cluster),
        ]
    return objects
