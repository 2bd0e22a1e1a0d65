"""The Helm chart and the kustomize manifests: lint, render, install, and run as their RBAC allows.

helm is the one built by tools/k8s (pinned version), talking to the test control plane.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from conftest import Api, ControlPlane

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "block"
MANIFESTS = REPO / "manifests"
READY_TIMEOUT_S = 90


def _helm(cp: ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cp.binary("helm")), *args],
        env=cp.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


def _template(cp: ControlPlane, *args: str) -> list[dict[str, Any]]:
    out = _helm(cp, "template", "block", str(CHART), "--namespace", "block-system", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def test_chart_lints_strictly(control_plane: ControlPlane) -> None:
    result = _helm(control_plane, "lint", "--strict", str(CHART), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_chart_renders_operator_with_standard_labels(control_plane: ControlPlane) -> None:
    docs = _template(control_plane)
    assert sorted(d["kind"] for d in docs) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "ServiceAccount",
    ]
    for doc in docs:
        labels = doc["metadata"]["labels"]
        for key in (
            "helm.sh/chart",
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
        ):
            assert key in labels, (doc["kind"], key)
    deployment = _one(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["block", "operator", "run"]
    assert container["image"] == "block:0.1.0"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["BLOCK_OPERATOR_IMAGE"] == container["image"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_chart_watching_namespaces_installs_no_cluster_role(control_plane: ControlPlane) -> None:
    docs = _template(control_plane, "--set", "operator.watchNamespaces={team-a,team-b}")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Role",
        "Role",
        "RoleBinding",
        "RoleBinding",
        "ServiceAccount",
    ]
    # Cluster-wide, only what kopf reads to observe namespaces and CRDs.
    (observer,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert {v for rule in observer["rules"] for v in rule["verbs"]} == {"list", "watch"}
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] == "Role"} == {
        "team-a",
        "team-b",
    }
    (container,) = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--namespace=team-a" in container["args"] and "--namespace=team-b" in container["args"]


def test_values_schema_rejects_bad_values(control_plane: ControlPlane) -> None:
    result = _helm(
        control_plane, "template", "block", str(CHART), "--set", "image.pullPolicy=Sometimes",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "pullPolicy" in result.stderr


def test_manifests_match_the_chart(control_plane: ControlPlane) -> None:
    """`kubectl apply -k manifests/` installs what the chart installs with default values."""
    chart = _template(control_plane)
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    plain = [yaml.safe_load((MANIFESTS / r).read_text()) for r in kustomization["resources"]]
    assert _one(plain, "ClusterRole")["rules"] == _one(chart, "ClusterRole")["rules"]
    chart_pod = _one(chart, "Deployment")["spec"]["template"]["spec"]
    plain_pod = _one(plain, "Deployment")["spec"]["template"]["spec"]
    assert plain_pod["securityContext"] == chart_pod["securityContext"]
    for key in ("command", "args", "env", "securityContext", "livenessProbe", "resources"):
        assert plain_pod["containers"][0][key] == chart_pod["containers"][0][key], key


def test_manifests_apply_to_a_real_cluster(api: Api, apply: Any, wait_for: Any) -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    # kubectl apply -k with only `namespace` and `resources`: nothing else to interpret.
    assert set(kustomization) == {"apiVersion", "kind", "namespace", "resources"}
    for resource in kustomization["resources"]:
        obj = yaml.safe_load((MANIFESTS / resource).read_text())
        apply(obj, kustomization["namespace"])
    wait_for(
        "the operator pod from manifests/ to run (on kwok)",
        lambda: any(
            p["status"].get("phase") == "Running"
            for p in api.list(
                "/api/v1/namespaces/block-system/pods", "app.kubernetes.io/component=operator"
            )
        ),
        READY_TIMEOUT_S,
    )


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_helm_install_then_operator_as_the_chart_service_account(
    control_plane: ControlPlane,
    api: Api,
    namespace: str,
    start_operator: Any,
    service_account_kubeconfig: Any,
    api_for_token: Any,
    wait_for: Any,
    mode: str,
) -> None:
    release = f"block-{secrets.token_hex(3)}"  # also the release's namespace
    values = ["--set", f"operator.watchNamespaces={{{namespace}}}"] if mode == "namespaced" else []
    _helm(
        control_plane, "install", release, str(CHART), "--namespace", release,
        "--create-namespace", "--wait", "--timeout", "120s", *values,
    )  # fmt: skip
    try:
        deployment = api.get(f"/apis/apps/v1/namespaces/{release}/deployments/{release}")
        assert deployment is not None
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        kubeconfig, token = service_account_kubeconfig(release, pod["serviceAccountName"])

        # The operator as the chart runs it: its arguments, environment and identity.
        env = {e["name"]: e["value"] for e in container["env"]}
        operator = start_operator([], kubeconfig=kubeconfig, args=container["args"], env=env)
        example = yaml.safe_load((MANIFESTS / "examples" / "twin.yaml").read_text())
        api.create(f"/apis/block.dev/v1alpha1/namespaces/{namespace}/blockclusters", example)
        name = example["metadata"]["name"]
        path = f"/apis/block.dev/v1alpha1/namespaces/{namespace}/blockclusters/{name}"

        def ready() -> bool:
            obj = api.get(path) or {}
            status = obj.get("status", {})
            conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
            return conditions.get("Ready") == "True" and status.get("observedGeneration") == 1

        wait_for("the example to be Ready under the chart's RBAC", ready, READY_TIMEOUT_S)
        engine = api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}-engine")
        assert engine is not None
        images = {c["image"] for c in engine["spec"]["template"]["spec"]["containers"]}
        assert images == {env["BLOCK_OPERATOR_IMAGE"]}
        log = operator.log_text()
        assert "Forbidden" not in log, log[-3000:]

        # Least privilege: the operator's identity cannot delete what it manages, nor read secrets.
        as_operator = api_for_token(token)
        with pytest.raises(as_operator.Error) as caught:
            as_operator.request(
                "DELETE", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}-engine"
            )
        assert caught.value.code == 403
        with pytest.raises(as_operator.Error) as caught:
            as_operator.request("GET", f"/api/v1/namespaces/{namespace}/secrets")
        assert caught.value.code == 403
    finally:
        _helm(control_plane, "uninstall", release, "--namespace", release, check=False)
        api.delete(f"/api/v1/namespaces/{release}")
