"""NetworkPolicies of a BlockCluster: who may connect to which of its pods (pure).

- `NAME-engine`: the engine pods admit connections to the predictor sidecar's port only
  (`PREDICTOR_PORT`; the engine itself listens on the pod's loopback), and only from this
  cluster's gateway and endpoint-picker pods plus the peers of `spec.networkPolicy.ingressFrom`
  (a Gateway API implementation's proxies, which carry the InferencePool front door's requests
  to the sidecars; Prometheus). The operator itself never calls the sidecars.
- `NAME-scheduler`: the gateway's listener from anywhere (its other ports are on loopback).
- `NAME-epp` (with the InferencePool front door): the picker's gRPC and admin ports from
  anywhere (the admin endpoints want the admin token).

With `spec.networkPolicy.enabled: false` the same policies admit everything: the operator never
deletes (its RBAC has no delete), so opting out opens them instead of removing them. They take
effect where the cluster's network plugin enforces NetworkPolicies.
"""

from __future__ import annotations

from typing import Any

from block.operator.blockcluster import engine_objects, epp_objects, meta, scheduler_objects, specs

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
ALLOW_ALL: list[dict[str, Any]] = [{}]


def _policy(
    cluster: meta.ClusterRef,
    component: str,
    ingress: list[dict[str, Any]],
    spec: specs.BlockClusterSpec,
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta.metadata(cluster, component, component),
        "spec": {
            "podSelector": {"matchLabels": meta.selector_labels(cluster, component)},
            "policyTypes": ["Ingress"],
            "ingress": ingress if spec.network_policy.enabled else [dict(r) for r in ALLOW_ALL],
        },
    }


def _ports(*numbers: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": n} for n in numbers]


def engine_policy(cluster: meta.ClusterRef, spec: specs.BlockClusterSpec) -> dict[str, Any]:
    routers = [
        {"podSelector": {"matchLabels": meta.selector_labels(cluster, component)}}
        for component in (scheduler_objects.COMPONENT, epp_objects.COMPONENT)
    ]
    peers = [*routers, *(dict(p) for p in spec.network_policy.ingress_from)]
    ingress = [{"from": peers, "ports": _ports(meta.PREDICTOR_PORT)}]
    return _policy(cluster, engine_objects.COMPONENT, ingress, spec)


def scheduler_policy(cluster: meta.ClusterRef, spec: specs.BlockClusterSpec) -> dict[str, Any]:
    ingress = [{"ports": _ports(meta.SCHEDULER_PORT)}]
    return _policy(cluster, scheduler_objects.COMPONENT, ingress, spec)


def epp_policy(cluster: meta.ClusterRef, spec: specs.BlockClusterSpec) -> dict[str, Any]:
    ingress = [{"ports": _ports(meta.EPP_GRPC_PORT, meta.EPP_ADMIN_PORT)}]
    return _policy(cluster, epp_objects.COMPONENT, ingress, spec)
