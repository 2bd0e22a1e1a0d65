"""The ConfigMap of a BlockCluster: the cluster's resolved settings, read by its processes.

Mounted at `/etc/block/cluster.json` in the predictor and gateway containers (path in the
`BLOCK_CLUSTER_CONFIG` variable), so they can see the whole cluster's description (SLOs,
autoscaling window, where the engines are) without one flag per field. Its hash is stamped on
the pod templates: a change rolls the pods, as a changed flag would.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from block.operator.blockcluster import meta, specs

CONFIG_KEY = "cluster.json"
CONFIG_DIR = "/etc/block"
CONFIG_ENV = "BLOCK_CLUSTER_CONFIG"


def cluster_config(cluster: meta.ClusterRef, spec: specs.BlockClusterSpec) -> dict[str, Any]:
    """The settings every Block process of this cluster may read (JSON-ready, sorted)."""
    return {
        "cluster": cluster.name,
        "namespace": cluster.namespace,
        "model": spec.model,
        "gpu": spec.engine.gpu,
        "tensorParallel": spec.engine.tensor_parallel,
        "engineKind": spec.engine.kind,
        "policy": spec.scheduler.policy,
        "slo": spec.slo.model_dump(by_alias=True, exclude_none=True),
        "autoscaling": spec.autoscaling.model_dump(by_alias=True),
        "replicas": {"min": spec.min_replicas, "max": spec.max_replicas},
        "engineService": meta.child_name(cluster, "engine"),
        "enginePort": meta.SERVICE_PORT,
    }


def config_data(cluster: meta.ClusterRef, spec: specs.BlockClusterSpec) -> dict[str, str]:
    return {CONFIG_KEY: json.dumps(cluster_config(cluster, spec), indent=2, sort_keys=True)}


def config_hash(data: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def config_map(cluster: meta.ClusterRef, spec: specs.BlockClusterSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta.metadata(cluster, "config", "config"),
        "data": config_data(cluster, spec),
    }


def pod_volume(cluster: meta.ClusterRef) -> dict[str, Any]:
    return {"name": "block-config", "configMap": {"name": meta.child_name(cluster, "config")}}


def volume_mount() -> dict[str, Any]:
    return {"name": "block-config", "mountPath": CONFIG_DIR, "readOnly": True}


def env() -> list[dict[str, str]]:
    return [{"name": CONFIG_ENV, "value": f"{CONFIG_DIR}/{CONFIG_KEY}"}]
