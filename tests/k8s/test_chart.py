"""The Helm chart and the kustomize manifests: lint, render, install, and run as their RBAC allows;
the chart's routing for engine pods it does not manage (the endpoint picker with an
InferencePool, the standalone gateway), installed against the published InferencePool CRD.

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
    inference_pool_crd: Any,
    start_operator: Any,
    service_account_kubeconfig: Any,
    api_for_token: Any,
    wait_for: Any,
    mode: str,
) -> None:
    release = f"block-{secrets.token_hex(3)}"  # also the release's namespace
    values = ["--set", f"operator.watchNamespaces={{{namespace}}}"] if mode == "namespaced" else []
    inference_pool_crd()  # the chart's RBAC must let the operator create the pool too
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
        # Admit a Gateway's proxies, so that the InferencePool counts as a front door.
        example["spec"]["networkPolicy"] = {"ingressFrom": [{"namespaceSelector": {}}]}
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
        status = (api.get(path) or {})["status"]
        assert status["frontDoors"] == ["Gateway", "InferencePool"]
        pools = f"/apis/inference.networking.k8s.io/v1/namespaces/{namespace}/inferencepools"
        assert api.get(f"{pools}/{status['inferencePool']}") is not None
        assert api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}-epp") is not None
        log = operator.log_text()
        assert "Forbidden" not in log, log[-3000:]

        # The admin-token Secret was created under the chart's RBAC (get and create only).
        secret = api.get(f"/api/v1/namespaces/{namespace}/secrets/{name}-admin")
        assert secret is not None and secret["data"]["token"]

        # Least privilege: the operator's identity cannot delete what it manages, nor list
        # secrets (it reads only those it names).
        as_operator = api_for_token(token)
        with pytest.raises(as_operator.Error) as caught:
            as_operator.request(
                "DELETE", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}-engine"
            )
        assert caught.value.code == 403
        with pytest.raises(as_operator.Error) as caught:
            as_operator.request("GET", f"/api/v1/namespaces/{namespace}/secrets")
        assert caught.value.code == 403
        with pytest.raises(as_operator.Error) as caught:
            as_operator.request("DELETE", f"{pools}/{status['inferencePool']}")
        assert caught.value.code == 403
    finally:
        _helm(control_plane, "uninstall", release, "--namespace", release, check=False)
        api.delete(f"/api/v1/namespaces/{release}")


ROUTING = [
    "--set", "epp.enabled=true",
    "--set", "gateway.enabled=true",
    "--set", "epp.engineSelector.app=my-vllm",
    "--set", "epp.policy=llumnix",
    "--set-string", "epp.args={--slo-ttft-ms,500}",
]  # fmt: skip


def test_routing_is_off_by_default_and_needs_an_engine_selector(
    control_plane: ControlPlane,
) -> None:
    kinds = {d["kind"] for d in _template(control_plane)}
    assert not kinds & {"InferencePool", "Service", "Role"}
    result = _helm(
        control_plane, "template", "block", str(CHART), "--set", "gateway.enabled=true",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "epp.engineSelector must name the labels of your engine pods" in result.stderr


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _argv(deployment: dict[str, Any]) -> list[str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return [*container["command"], *container["args"]]


def test_chart_renders_the_picker_the_pool_and_the_gateway(control_plane: ControlPlane) -> None:
    from block import cli

    docs = _template(control_plane, *ROUTING)
    routing = sorted(
        (d["kind"], d["metadata"]["name"]) for d in docs if not d["kind"].startswith("Cluster")
    )
    assert routing == [
        ("Deployment", "block"),  # the operator
        ("Deployment", "block-epp"),
        ("Deployment", "block-gateway"),
        ("InferencePool", "block"),
        ("NetworkPolicy", "block-engines"),
        ("Role", "block-picker"),
        ("RoleBinding", "block-picker"),
        ("Service", "block-engines"),
        ("Service", "block-epp"),
        ("Service", "block-gateway"),
        ("ServiceAccount", "block"),
        ("ServiceAccount", "block-picker"),
    ]
    engines = _named(docs, "Service", "block-engines")["spec"]
    assert engines["clusterIP"] == "None" and engines["selector"] == {"app": "my-vllm"}
    assert engines["ports"] == [{"name": "http", "port": 8000, "targetPort": 8000,
                                 "protocol": "TCP"}]  # fmt: skip

    epp = _argv(_named(docs, "Deployment", "block-epp"))
    gateway = _argv(_named(docs, "Deployment", "block-gateway"))
    assert epp[:2] == ["block", "epp"] and gateway[:2] == ["block", "gateway"]
    for argv in (epp, gateway):
        # What the image runs parses with the real CLI, into k8s discovery of the engines.
        args = cli.build_parser().parse_args(argv[1:])
        assert callable(args.handler)
        assert (args.discover, args.namespace, args.service) == ("k8s", "block-system",
                                                                 "block-engines")  # fmt: skip
        assert (args.policy, args.slo_ttft_ms, args.port_name) == ("llumnix", 500.0, "http")
    assert "--replicas-dns=block-engines.block-system.svc.cluster.local:8000" in gateway
    for name in ("block-epp", "block-gateway"):
        pod = _named(docs, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "block-picker"
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]

    pool = _named(docs, "InferencePool", "block")
    assert pool["spec"] == {
        "selector": {"matchLabels": {"app": "my-vllm"}},
        "targetPorts": [{"number": 8000}],
        "endpointPickerRef": {"kind": "Service", "name": "block-epp", "port": {"number": 9002},
                              "failureMode": "FailOpen"},
    }  # fmt: skip
    ports = {p["name"]: p for p in _named(docs, "Service", "block-epp")["spec"]["ports"]}
    assert (ports["grpc"]["port"], ports["grpc"]["appProtocol"]) == (9002, "http2")
    role = _named(docs, "Role", "block-picker")
    assert {v for rule in role["rules"] for v in rule["verbs"]} == {"get", "list", "watch"}

    # The gateway alone (no Gateway API implementation): no picker Deployment, no pool.
    alone = _template(control_plane, "--set", "gateway.enabled=true",
                      "--set", "epp.engineSelector.app=my-vllm")  # fmt: skip
    assert not [d for d in alone if d["kind"] == "InferencePool" or d["metadata"]["name"] ==
                "block-epp"]  # fmt: skip


def test_helm_install_routing_for_your_own_engines(
    control_plane: ControlPlane,
    api: Api,
    namespace: str,
    inference_pool_crd: Any,
    service_account_kubeconfig: Any,
    api_for_token: Any,
    wait_for: Any,
) -> None:
    """Installed against the published InferencePool CRD: the apiserver accepts the pool, and the
    picker's identity reads the engines' EndpointSlices and nothing more."""
    inference_pool_crd()
    release = f"r-{secrets.token_hex(3)}"
    engines = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "my-vllm"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "my-vllm"}},
            "template": {
                "metadata": {"labels": {"app": "my-vllm"}},
                "spec": {"containers": [{"name": "predictor", "image": "block:test",
                                         "ports": [{"name": "http", "containerPort": 8000}]}]},
            },
        },
    }  # fmt: skip
    api.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", engines)
    installed = _helm(
        control_plane, "install", release, str(CHART), "--namespace", namespace,
        "--wait", "--timeout", "120s", *ROUTING,
    )  # fmt: skip
    try:
        assert f"InferencePool {release}-block" in installed.stdout  # NOTES
        pool = api.get(
            f"/apis/inference.networking.k8s.io/v1/namespaces/{namespace}/inferencepools/"
            f"{release}-block"
        )
        assert pool is not None
        # Server-side defaults of the real CRD filled in.
        assert pool["spec"]["appProtocol"] == "http"
        assert pool["spec"]["endpointPickerRef"]["group"] == ""

        _, token = service_account_kubeconfig(namespace, f"{release}-block-picker")
        as_picker = api_for_token(token)
        slices = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"

        def engine_endpoints() -> int:
            items = as_picker.list(slices, f"kubernetes.io/service-name={release}-block-engines")
            return sum(len(s.get("endpoints") or []) for s in items)

        wait_for("the engines Service to list both engine pods", lambda: engine_endpoints() == 2)
        for forbidden in (f"/api/v1/namespaces/{namespace}/pods",
                          f"/api/v1/namespaces/{namespace}/secrets"):  # fmt: skip
            with pytest.raises(as_picker.Error) as caught:
                as_picker.request("GET", forbidden)
            assert caught.value.code == 403
    finally:
        _helm(control_plane, "uninstall", release, "--namespace", namespace, check=False)


def test_chart_guards_your_engines_and_mounts_the_pickers_credentials(
    control_plane: ControlPlane,
) -> None:
    """Issue 20, items 1 and 9 for engine pods the chart does not manage."""
    credentials = ["--set", "epp.adminToken.secretName=block-admin",
                   "--set", "epp.apiKeys.secretName=block-keys"]  # fmt: skip
    docs = _template(control_plane, *ROUTING, *credentials)
    policy = _named(docs, "NetworkPolicy", "block-engines")["spec"]
    assert policy["podSelector"] == {"matchLabels": {"app": "my-vllm"}}
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    for name in ("block-epp", "block-gateway"):
        deployment = _named(docs, "Deployment", name)
        labels = deployment["spec"]["selector"]["matchLabels"]
        assert {"podSelector": {"matchLabels": labels}} in rule["from"]
        argv = _argv(deployment)
        assert "--admin-token-file=/var/run/secrets/block/admin/token" in argv
        assert "--api-keys-file=/var/run/secrets/block/api-keys/keys" in argv
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["fsGroup"] == 10001
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert secrets == {"admin-token": "block-admin", "api-keys": "block-keys"}
        (container,) = pod["containers"]
        assert container["resources"]["limits"]["memory"] == "1Gi"
    assert len(rule["from"]) == 2
    opened = _template(control_plane, *ROUTING, "--set", "networkPolicy.enabled=false")
    assert not [d for d in opened if d["kind"] == "NetworkPolicy"]
    bare = _template(control_plane, *ROUTING)
    assert "--admin-token-file" not in " ".join(_argv(_named(bare, "Deployment", "block-epp")))
