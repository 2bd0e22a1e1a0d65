"""The gateway's Kubernetes discovery against the real control plane.

Engine pods (a Deployment, made Ready by kwok) behind a Service; the controller-manager keeps
the Service's EndpointSlices. The gateway's discovery watches them with the service account and
Role the operator renders for the gateway, and follows scaling up and down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from block.operator.blockcluster import meta, scheduler_objects
from block.scheduler.discovery import KubernetesDiscovery
from block.scheduler.replicas import ReplicaSet

if TYPE_CHECKING:
    from conftest import Api

pytestmark = pytest.mark.k8s

ENGINE_LABELS = {"app": "engine-under-test"}


def engine_deployment(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "engine"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": ENGINE_LABELS},
            "template": {
                "metadata": {"labels": ENGINE_LABELS},
                "spec": {
                    "containers": [
                        {
                            "name": "predictor",
                            "image": "registry.invalid/block:test",
                            "ports": [{"name": "http", "containerPort": 8000}],
                        }
                    ]
                },
            },
        },
    }


async def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_discovery_follows_the_engine_service(
    api: Api, namespace: str, apply: Any, service_account_kubeconfig: Any
) -> None:
    from kubernetes import config

    cluster = meta.ClusterRef(name="demo", namespace=namespace, uid="not-a-real-owner")
    for obj in (
        scheduler_objects.service_account(cluster),
        scheduler_objects.role(cluster),
        scheduler_objects.role_binding(cluster),
    ):
        obj["metadata"].pop("ownerReferences")  # no BlockCluster here to own them
        apply(obj)
    apply(engine_deployment(2), namespace)
    apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "demo-engine"},
            "spec": {
                "selector": ENGINE_LABELS,
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },
        namespace,
    )
    kubeconfig, _ = service_account_kubeconfig(namespace, meta.child_name(cluster, "scheduler"))
    client = config.new_client_from_config(str(kubeconfig))
    disc = KubernetesDiscovery("demo-engine", namespace, "http", api_client=client)
    replicas = ReplicaSet()
    await disc.start(replicas.update)
    try:

        def ready() -> list[str]:
            return sorted(r.url for r in replicas.all() if r.ready)

        await wait_until(lambda: len(ready()) == 2, "two ready engine pods")
        pods = api.list(f"/api/v1/namespaces/{namespace}/pods", "app=engine-under-test")
        assert ready() == sorted(f"http://{p['status']['podIP']}:8000" for p in pods)
        assert {r.name for r in replicas.all()} == {p["metadata"]["name"] for p in pods}

        apply(engine_deployment(3), namespace)
        await wait_until(lambda: len(ready()) == 3, "a third pod")
        apply(engine_deployment(1), namespace)
        await wait_until(lambda: len(ready()) == 1, "scale down to one")
        assert disc.syncs >= 1
    finally:
        await disc.stop()
