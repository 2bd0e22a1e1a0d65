"""Issue 20 on the real control plane: the admin-token Secret (item 1), spec args that would
override the operator's flags (item 8), NetworkPolicies around the sidecars (item 9), and a
status that tells the truth (item 10: admission refuses what cannot run; what the apiserver
refuses at apply is in the conditions with its message).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Api

pytestmark = pytest.mark.k8s

MODEL = "meta-llama/Llama-2-7b-hf"
READY_TIMEOUT_S = 90


def _clusters(namespace: str) -> str:
    return f"/apis/block.dev/v1alpha1/namespaces/{namespace}/blockclusters"


def _body(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "block.dev/v1alpha1",
        "kind": "BlockCluster",
        "metadata": {"name": name},
        "spec": {"model": MODEL, "engine": {"kind": "twin", "gpu": "a100"}, **spec},
    }


def _conditions(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in ((obj or {}).get("status") or {}).get("conditions", [])}


def _ready_at(api: Api, path: str, generation: int) -> Any:
    def check() -> dict[str, Any] | None:
        obj = api.get(path)
        ok = _conditions(obj).get("Ready", {}).get("status") == "True"
        return obj if ok and obj and obj["status"].get("observedGeneration") == generation else None

    return check


def _token(api: Api, namespace: str, name: str) -> str:
    secret = api.get(f"/api/v1/namespaces/{namespace}/secrets/{name}-admin")
    assert secret is not None
    return base64.b64decode(secret["data"]["token"]).decode()


def _pod(api: Api, namespace: str, deployment: str) -> dict[str, Any]:
    obj = api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}")
    assert obj is not None, deployment
    return dict(obj["spec"]["template"]["spec"])


def test_admin_token_secret_is_made_once_and_mounted_with_the_api_keys(
    api: Api, namespace: str, start_operator: Any, wait_for: Any
) -> None:
    """Item 1: one random token per cluster, kept across reconciles and spec changes; the
    gateway mounts it (and the API keys the spec names) and is told where."""
    start_operator([namespace])
    api.create(_clusters(namespace), _body("demo"))
    path = f"{_clusters(namespace)}/demo"
    wait_for("the cluster to be Ready", _ready_at(api, path, 1), READY_TIMEOUT_S)
    token = _token(api, namespace, "demo")
    assert len(token) == 64 and int(token, 16) >= 0
    secret = api.get(f"/api/v1/namespaces/{namespace}/secrets/demo-admin") or {}
    assert secret["metadata"]["ownerReferences"][0]["name"] == "demo"

    # A spec change and further reconciles (the resync timer, every 5 s here) keep the token.
    api.merge_patch(path, {"spec": {"scheduler": {"apiKeys": {"secretName": "demo-keys"}}}})
    blocked = wait_for(
        "Ready=False while the API-key Secret is missing",
        lambda: (
            (c := _conditions(api.get(path)).get("Ready", {})).get("reason") == "SecretMissing"
            and c
        ),
        READY_TIMEOUT_S,
    )
    assert "Secret demo-keys (scheduler.apiKeys) does not exist" in blocked["message"]
    api.create(
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": "demo-keys"}, "stringData": {"keys": "sk-one\n"}},
    )
    wait_for("Ready at generation 2", _ready_at(api, path, 2), READY_TIMEOUT_S)
    assert _token(api, namespace, "demo") == token

    pod = _pod(api, namespace, "demo-scheduler")
    (container,) = pod["containers"]
    args = container["args"]
    token_file = args[args.index("--admin-token-file") + 1]
    keys_file = args[args.index("--api-keys-file") + 1]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["admin-token"]["secret"]["secretName"] == "demo-admin"
    assert token_file.startswith(mounts["admin-token"]["mountPath"] + "/")
    assert volumes["api-keys"]["secret"]["secretName"] == "demo-keys"
    assert keys_file.startswith(mounts["api-keys"]["mountPath"] + "/")
    assert all(m["readOnly"] for m in mounts.values() if m["name"] != "tmp")
    # The engine pods hold no credentials.
    engine = _pod(api, namespace, "demo-engine")
    assert not [v for v in engine["volumes"] if "secret" in v]

    # Deleting the Secret rotates the token: the next reconcile makes a new one.
    api.delete(f"/api/v1/namespaces/{namespace}/secrets/demo-admin")
    renewed = wait_for(
        "a new admin Secret",
        lambda: api.get(f"/api/v1/namespaces/{namespace}/secrets/demo-admin"),
        READY_TIMEOUT_S,
    )
    assert base64.b64decode(renewed["data"]["token"]).decode() != token


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"scheduler": {"args": ["--discover", "static", "--replicas",
                                    "http://169.254.169.254/latest"]}},
            "scheduler.args must not set flags the operator sets",
        ),
        ({"scheduler": {"args": ["--disc=static"]}}, "scheduler.args must not set flags"),
        ({"scheduler": {"args": ["--admin-token-file", "/x"]}}, "scheduler.args must not set"),
        ({"predictor": {"args": ["--engine-url", "http://evil"]}}, "predictor.args must not set"),
        ({"engine": {"kind": "twin", "gpu": "a100", "args": ["--host=0.0.0.0"]}},
         "engine.args must not set flags"),
        ({"scheduler": {"policy": "llm-d-scorers"}}, "scheduler.policy must be one of"),
        ({"scheduler": {"policy": "power-of-0"}}, "scheduler.policy must be one of"),
    ],
    ids=["discover-static", "abbreviated", "admin-token", "engine-url", "engine-host",
         "offline-policy", "k-zero"],
)  # fmt: skip
def test_args_overriding_operator_flags_are_refused_at_admission(
    api: Api, namespace: str, blockcluster_crd: Any, spec: dict[str, Any], message: str
) -> None:
    """Item 8."""
    with pytest.raises(api.Error) as caught:
        api.create(_clusters(namespace), _body("bad", **spec))
    assert caught.value.code == 422
    assert message in caught.value.body["message"]


@pytest.mark.parametrize("policy", ["prefix-affinity", "power-of-4", "block-k3", "power-of-k"])
def test_policies_the_gateway_takes_are_admitted(
    api: Api, namespace: str, blockcluster_crd: Any, policy: str
) -> None:
    """Item 8: the policy field takes what the gateway accepts, and other args still pass."""
    spec = {"scheduler": {"policy": policy, "args": ["--k", "3", "--envoy-concurrency=1"]}}
    created = api.create(_clusters(namespace), _body("ok", **spec))
    assert created["spec"]["scheduler"]["policy"] == policy


def test_network_policies_guard_the_sidecars_and_can_be_opened(
    api: Api, namespace: str, start_operator: Any, wait_for: Any
) -> None:
    """Item 9: the apiserver takes the operator's NetworkPolicies; opting out opens them."""
    start_operator([namespace])
    api.create(_clusters(namespace), _body("demo"))
    path = f"{_clusters(namespace)}/demo"
    wait_for("the cluster to be Ready", _ready_at(api, path, 1), READY_TIMEOUT_S)
    policies = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"
    engine = (api.get(f"{policies}/demo-engine") or {})["spec"]
    engine_pod = api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/demo-engine") or {}
    assert engine["podSelector"]["matchLabels"] == engine_pod["spec"]["selector"]["matchLabels"]
    (rule,) = engine["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    gateway = api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/demo-scheduler") or {}
    gateway_labels = gateway["spec"]["template"]["metadata"]["labels"]
    routers = [p["podSelector"]["matchLabels"] for p in rule["from"]]
    assert any(r.items() <= gateway_labels.items() for r in routers)
    # The engine listens on the pod's loopback; no Service port reaches it.
    (engine_container,) = [c for c in _pod(api, namespace, "demo-engine")["containers"]
                           if c["name"] == "engine"]  # fmt: skip
    assert engine_container["args"][engine_container["args"].index("--host") + 1] == "127.0.0.1"
    services = api.list(f"/api/v1/namespaces/{namespace}/services", "block.dev/cluster=demo")
    assert {p["port"] for s in services for p in s["spec"]["ports"]} <= {80, 8000}

    api.merge_patch(path, {"spec": {"networkPolicy": {"enabled": False}}})
    wait_for(
        "the policies to admit everything",
        lambda: all(
            (api.get(f"{policies}/{name}") or {}).get("spec", {}).get("ingress") == [{}]
            for name in ("demo-engine", "demo-scheduler")
        ),
        READY_TIMEOUT_S,
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"engine": {"kind": "twin", "gpu": "b200"}}, "engine.gpu must be one of: a100, h100"),
        ({"model": "meta-llama/Llama-3.1-8B-Instruct"}, "model must be one Block has"),
        ({"engine": {"kind": "twin", "gpu": "h100", "tensorParallel": 8},
          "model": "meta-llama/Meta-Llama-3-8B"}, "no latency profile for this model"),
        ({"engine": {"kind": "twin", "gpu": "a100", "resources": {"limits": {"cpu": "lots"}}}},
         "must be a Kubernetes quantity"),
        ({"predictor": {"resources": {"requests": {"memory": "-1Gi"}}}},
         "must be a Kubernetes quantity"),
    ],
    ids=["gpu", "model", "tp", "quantity", "negative"],
)  # fmt: skip
def test_what_cannot_run_is_refused_at_admission(
    api: Api, namespace: str, blockcluster_crd: Any, spec: dict[str, Any], message: str
) -> None:
    """Item 10: no unknown GPU or model (the binaries exit at start), no bad quantity."""
    with pytest.raises(api.Error) as caught:
        api.create(_clusters(namespace), _body("bad", **spec))
    assert caught.value.code == 422
    assert message in caught.value.body["message"]


def test_catalogue_spellings_and_own_images_are_admitted(
    api: Api, namespace: str, blockcluster_crd: Any
) -> None:
    api.create(_clusters(namespace), _body("short", model="LLAMA-2-7B",
                                          engine={"kind": "twin", "gpu": "A100"}))  # fmt: skip
    # Images of your own may carry profiles Block does not ship.
    own = _body("own", model="my-org/my-model", predictor={"image": "me/block:1"},
                engine={"kind": "vllm", "image": "vllm/vllm-openai:v1", "gpu": "b200"})  # fmt: skip
    api.create(_clusters(namespace), own)


def test_a_child_the_apiserver_refuses_is_in_the_status_then_repaired(
    api: Api, namespace: str, start_operator: Any, wait_for: Any
) -> None:
    """Item 10: a request above its limit passes the CRD but not Deployment validation: the
    conditions carry the apiserver's message and name the child; fixing the spec recovers."""
    start_operator([namespace])
    resources = {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}
    api.create(_clusters(namespace), _body("demo", predictor={"resources": resources}))
    path = f"{_clusters(namespace)}/demo"
    degraded = wait_for(
        "Degraded with the apiserver's message",
        lambda: (c := _conditions(api.get(path)).get("Degraded", {})).get("status") == "True" and c,
        READY_TIMEOUT_S,
    )
    assert degraded["reason"] == "ApplyRejected"
    assert degraded["message"].startswith("applying Deployment demo-engine: ")
    assert "must be less than or equal to cpu limit" in degraded["message"]
    cluster = api.get(path) or {}
    assert _conditions(cluster)["Ready"]["status"] == "False"
    assert "observedGeneration" not in cluster["status"]  # no generation was applied

    api.merge_patch(path, {"spec": {"predictor": {"resources": {"limits": {"cpu": "2"}}}}})
    cluster = wait_for("Ready at generation 2", _ready_at(api, path, 2), READY_TIMEOUT_S)
    assert _conditions(cluster)["Degraded"]["status"] == "False"
    pod = _pod(api, namespace, "demo-engine")
    limits = {c["name"]: c["resources"]["limits"] for c in pod["containers"]}
    assert limits["predictor"] == {"cpu": "2", "memory": "1Gi"}
    assert limits["engine"]["memory"] == "1Gi"  # item 3: a memory limit by default
