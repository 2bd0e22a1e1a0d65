"""The test control plane itself: versions as stamped, Deployments get Running pods, helm works."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Api, ControlPlane

pytestmark = pytest.mark.k8s

VERSIONS_ENV = Path(__file__).resolve().parents[2] / "tools" / "k8s" / "versions.env"


def _versions() -> dict[str, str]:
    lines = VERSIONS_ENV.read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_apiserver_reports_the_pinned_version(api: Api) -> None:
    info = api.request("GET", "/version")
    kube_version = _versions()["KUBE_VERSION"]
    assert info["gitVersion"] == kube_version
    assert (info["major"], info["minor"]) == ("1", kube_version.split(".")[1])


def test_deployment_pod_runs_on_the_fake_gpu_node(
    control_plane: ControlPlane, api: Api, namespace: str, wait_for: Any
) -> None:
    labels = {"app": "smoke"}
    api.create(
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        {
            "metadata": {"name": "smoke"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "engine",
                                "image": "registry.invalid/engine:1",
                                "resources": {"limits": {"nvidia.com/gpu": "1"}},
                            }
                        ]
                    },
                },
            },
        },
    )
    pods_path = f"/api/v1/namespaces/{namespace}/pods"

    def running() -> list[dict[str, Any]]:
        pods = api.list(pods_path, "app=smoke")
        ok = len(pods) == 2 and all(p["status"].get("phase") == "Running" for p in pods)
        return pods if ok else []

    pods = wait_for("2 Running smoke pods", running)
    assert {p["spec"]["nodeName"] for p in pods} == {control_plane.node_name}
    assert all(p["status"].get("podIP") for p in pods)
    wait_for(
        "the Deployment to count 2 ready replicas",
        lambda: (
            (api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/smoke") or {})
            .get("status", {})
            .get("readyReplicas")
            == 2
        ),
    )


def test_gpu_capacity_limits_scheduling(api: Api, namespace: str, wait_for: Any) -> None:
    """The fake node has 8 GPUs: a pod asking for 9 stays Pending with the scheduler's reason."""
    api.create(
        f"/api/v1/namespaces/{namespace}/pods",
        {
            "metadata": {"name": "too-big"},
            "spec": {
                "containers": [
                    {
                        "name": "engine",
                        "image": "registry.invalid/engine:1",
                        "resources": {"limits": {"nvidia.com/gpu": "9"}},
                    }
                ]
            },
        },
    )

    def unschedulable() -> str:
        pod = api.get(f"/api/v1/namespaces/{namespace}/pods/too-big") or {}
        for c in pod.get("status", {}).get("conditions", []):
            if c["type"] == "PodScheduled" and c["status"] == "False":
                return str(c.get("message", ""))
        return ""

    message = wait_for("the scheduler to refuse the pod", unschedulable, 30)
    assert "nvidia.com/gpu" in message


def test_helm_reports_its_pinned_version(control_plane: ControlPlane) -> None:
    out = subprocess.run(
        [str(control_plane.binary("helm")), "version", "--template", "{{.Version}}"],
        env=control_plane.env(),
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert out.strip() == _versions()["HELM_VERSION"]
