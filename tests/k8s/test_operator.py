"""The operator against the real control plane: children, status, validation, repair, deletion,
and the InferencePool front door once the cluster has that CRD (the published one).

Each test runs its own `block operator run` subprocess watching only the test's namespace.
kwok plays the kubelet, so the engine, gateway and picker pods turn Running and Ready (their
containers never run: what is checked is the operator's and Kubernetes' side).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from block.operator.blockcluster import children, meta

if TYPE_CHECKING:
    from collections.abc import Callable

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
        "spec": {"model": MODEL, "engine": {"kind": "twin", "gpu": "a100"}, "replicas": 2, **spec},
    }


def _condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in (obj or {}).get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return {}


def _ready_at(api: Api, path: str, generation: int) -> Callable[[], dict[str, Any] | None]:
    """A check: the cluster at `path` is Ready and its status describes `generation`."""

    def check() -> dict[str, Any] | None:
        obj = api.get(path)
        if obj is None:
            return None
        status = obj.get("status", {})
        ready = _condition(obj, "Ready").get("status") == "True"
        if ready and status.get("observedGeneration") == generation:
            return obj
        return None

    return check


def _children(api: Api, namespace: str, name: str) -> dict[str, list[dict[str, Any]]]:
    """Every child kind -> the objects of that kind labelled as this cluster's (InferencePools
    only where the cluster serves them)."""
    selector = f"{meta.CLUSTER_LABEL}={name}"
    found = {}
    for api_version, kind in children.CHILD_KINDS:
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        plural = {
            "ConfigMap": "configmaps",
            "ServiceAccount": "serviceaccounts",
            "Role": "roles",
            "RoleBinding": "rolebindings",
            "Service": "services",
            "Deployment": "deployments",
            "NetworkPolicy": "networkpolicies",
            "InferencePool": "inferencepools",
        }[kind]
        if kind == "InferencePool" and not api.serves(f"/apis/{api_version}", plural):
            continue
        found[kind] = api.list(f"{prefix}/namespaces/{namespace}/{plural}", selector)
    return found


def _deployment(api: Api, namespace: str, name: str) -> dict[str, Any]:
    obj = api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    assert obj is not None, f"Deployment {name} is missing"
    return obj


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    (found,) = [c for c in containers if c["name"] == name]
    return dict(found)


def test_create_makes_owned_children_and_becomes_ready(
    api: Api, namespace: str, start_operator: Any, wait_for: Any
) -> None:
    start_operator([namespace])
    created = api.create(_clusters(namespace), _body("demo"))
    path = f"{_clusters(namespace)}/demo"
    cluster = wait_for("the cluster to be Ready", _ready_at(api, path, 1), READY_TIMEOUT_S)

    status = cluster["status"]
    assert (status["replicas"], status["readyReplicas"], status["updatedReplicas"]) == (2, 2, 2)
    assert status["schedulerReadyReplicas"] == 1
    assert status["selector"] == "app.kubernetes.io/component=engine,block.dev/cluster=demo"
    assert status["endpoint"] == f"http://demo-scheduler.{namespace}.svc:80"
    # No InferencePool API in this cluster: the standalone gateway is the one way in.
    assert status["frontDoors"] == ["Gateway"]
    assert "inferencePool" not in status and status.get("eppReadyReplicas", 0) == 0
    assert _condition(cluster, "Progressing")["status"] == "False"
    assert _condition(cluster, "Degraded")["status"] == "False"

    found = _children(api, namespace, "demo")
    assert {kind: len(objs) for kind, objs in found.items()} == {
        "ConfigMap": 1,
        "ServiceAccount": 1,
        "Role": 1,
        "RoleBinding": 1,
        "NetworkPolicy": 2,
        "Service": 3,
        "Deployment": 2,
    }
    for objs in found.values():
        for obj in objs:
            (owner,) = obj["metadata"]["ownerReferences"]
            assert (owner["kind"], owner["uid"]) == ("BlockCluster", created["metadata"]["uid"])
            managers = {(m["manager"], m["operation"]) for m in obj["metadata"]["managedFields"]}
            assert ("block-operator", "Apply") in managers

    engine = _deployment(api, namespace, "demo-engine")
    assert [c["name"] for c in engine["spec"]["template"]["spec"]["containers"]] == [
        "engine",
        "predictor",
    ]
    assert _container(engine, "engine")["command"] == ["block", "engine"]
    assert _container(engine, "predictor")["image"] == "block:test"

    # The standalone gateway: Envoy over the headless engine Service's pod IPs.
    gateway = _container(_deployment(api, namespace, "demo-scheduler"), "scheduler")
    assert gateway["command"] == ["block", "gateway"]
    dns = gateway["args"][gateway["args"].index("--replicas-dns") + 1]
    assert dns == f"demo-engine-headless.{namespace}.svc.cluster.local:{meta.PREDICTOR_PORT}"
    headless = api.get(f"/api/v1/namespaces/{namespace}/services/demo-engine-headless")
    assert headless is not None and headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == engine["spec"]["selector"]["matchLabels"]

    pods = api.list(f"/api/v1/namespaces/{namespace}/pods", status["selector"])
    assert len(pods) == 2 and all(p["status"]["phase"] == "Running" for p in pods)

    # What `kubectl get blockclusters` prints: the CRD's printer columns, served as a Table.
    table = api.request(
        "GET", _clusters(namespace), accept="application/json;as=Table;v=v1;g=meta.k8s.io"
    )
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns == ["Name", "Model", "Engine", "Policy", "Desired", "Ready", "Available", "Age"]
    (row,) = table["rows"]
    assert row["cells"][:7] == ["demo", MODEL, "twin", "block", 2, 2, "True"]

    scale = api.get(f"{path}/scale")
    assert scale is not None
    assert (scale["spec"]["replicas"], scale["status"]["selector"]) == (2, status["selector"])


def test_spec_change_rolls_out_and_advances_observed_generation(
    api: Api, namespace: str, start_operator: Any, wait_for: Any
) -> None:
    start_operator([namespace])
    api.create(_clusters(namespace), _body("demo"))
    path = f"{_clusters(namespace)}/demo"
    wait_for("the cluster to be Ready", _ready_at(api, path, 1), READY_TIMEOUT_S)
    engine_before = _deployment(api, namespace, "demo-engine")
    hash_before = engine_before["spec"]["template"]["metadata"]["annotations"][
        meta.CONFIG_HASH_ANNOTATION
    ]

    changed = api.merge_patch(
        path, {"spec": {"slo": {"ttftSeconds": 1.5}, "scheduler": {"policy": "llumnix"}}}
    )
    assert changed["metadata"]["generation"] == 2
    wait_for("Ready at generation 2", _ready_at(api, path, 2), READY_TIMEOUT_S)

    engine = _deployment(api, namespace, "demo-engine")
    assert (
        engine["spec"]["template"]["metadata"]["annotations"][meta.CONFIG_HASH_ANNOTATION]
        != hash_before
    )
    # A rollout happened: a second ReplicaSet owns all the ready pods now.
    replica_sets = api.list(
        f"/apis/apps/v1/namespaces/{namespace}/replicasets",
        "app.kubernetes.io/component=engine,block.dev/cluster=demo",
    )
    assert sorted(rs["status"].get("readyReplicas", 0) for rs in replica_sets) == [0, 2]
    scheduler_args = _container(_deployment(api, namespace, "demo-scheduler"), "scheduler")["args"]
    assert scheduler_args[scheduler_args.index("--policy") + 1] == "llumnix"
    config = api.get(f"/api/v1/namespaces/{namespace}/configmaps/demo-config")
    assert config is not None and '"ttftSeconds": 1.5' in config["data"]["cluster.json"]

    # kubectl scale goes through the scale subresource, and the engines follow.
    api.merge_patch(f"{path}/scale", {"spec": {"replicas": 3}})
    cluster = wait_for("Ready at generation 3", _ready_at(api, path, 3), READY_TIMEOUT_S)
    assert cluster["status"]["readyReplicas"] == 3
    assert _deployment(api, namespace, "demo-engine")["spec"]["replicas"] == 3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"minReplicas": 5, "maxReplicas": 2, "replicas": 2},
            "minReplicas must not exceed maxReplicas",
        ),
        ({"replicas": 9}, "replicas must lie between minReplicas and maxReplicas"),
        ({"engine": {"kind": "vllm"}}, "engine.image is required when engine.kind is vllm"),
        ({"scheduler": {"policy": "fastest"}}, "scheduler.policy must be one of: block,"),
        ({"slo": {"ttftSeconds": 0}}, "must be a positive number of seconds"),
        ({"engine": {"kind": "twin", "tensorParallel": 3}}, "tensorParallel must be 1, 2, 4 or 8"),
        ({"model": ""}, "model must name the model to serve"),
    ],
    ids=["min-over-max", "replicas-range", "vllm-no-image", "policy", "slo", "tp", "model"],
)
def test_invalid_spec_is_rejected_with_the_cel_message(
    api: Api, namespace: str, blockcluster_crd: Any, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(api.Error) as caught:
        api.create(_clusters(namespace), _body("bad", **spec))
    assert caught.value.code == 422
    assert message in caught.value.body["message"]


def test_scaling_past_max_replicas_is_rejected(
    api: Api, namespace: str, blockcluster_crd: Any
) -> None:
    api.create(_clusters(namespace), _body("demo", maxReplicas=4))
    with pytest.raises(api.Error) as caught:
        api.merge_patch(f"{_clusters(namespace)}/demo/scale", {"spec": {"replicas": 5}})
    assert caught.value.code == 422
    assert "replicas must lie between minReplicas and maxReplicas" in str(caught.value)


def test_deleted_or_edited_children_are_repaired(
    api: Api, namespace: str, start_operator: Any, wait_for: Any
) -> None:
    start_operator([namespace])
    api.create(_clusters(namespace), _body("demo"))
    path = f"{_clusters(namespace)}/demo"
    wait_for("the cluster to be Ready", _ready_at(api, path, 1), READY_TIMEOUT_S)

    service_path = f"/api/v1/namespaces/{namespace}/services/demo-engine"
    old_uid = (api.get(service_path) or {})["metadata"]["uid"]
    api.delete(service_path)
    api.delete(f"/apis/apps/v1/namespaces/{namespace}/deployments/demo-scheduler")
    api.delete(f"/api/v1/namespaces/{namespace}/configmaps/demo-config")

    wait_for(
        "the engine Service to come back",
        lambda: (api.get(service_path) or {}).get("metadata", {}).get("uid") not in (None, old_uid),
    )
    wait_for(
        "the scheduler Deployment and the ConfigMap to come back",
        lambda: (
            api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/demo-scheduler")
            and api.get(f"/api/v1/namespaces/{namespace}/configmaps/demo-config")
        ),
    )

    # A hand edit of a field the operator owns is drift: it is set back.
    engine_path = f"/apis/apps/v1/namespaces/{namespace}/deployments/demo-engine"
    api.merge_patch(engine_path, {"spec": {"replicas": 5}})
    wait_for(
        "the engine replicas to return to 2",
        lambda: (api.get(engine_path) or {}).get("spec", {}).get("replicas") == 2,
    )
    wait_for("the cluster to be Ready again", _ready_at(api, path, 1), READY_TIMEOUT_S)


def test_deleting_the_cluster_removes_every_child(
    api: Api, namespace: str, start_operator: Any, wait_for: Any
) -> None:
    start_operator([namespace])
    api.create(_clusters(namespace), _body("demo"))
    path = f"{_clusters(namespace)}/demo"
    wait_for("the cluster to be Ready", _ready_at(api, path, 1), READY_TIMEOUT_S)

    api.delete(path)
    wait_for("the BlockCluster to be gone", lambda: api.get(path) is None)

    def all_gone() -> bool:
        left = {k: len(v) for k, v in _children(api, namespace, "demo").items() if v}
        pods = api.list(f"/api/v1/namespaces/{namespace}/pods", f"{meta.CLUSTER_LABEL}=demo")
        return not left and not pods

    # The controller-manager's garbage collector follows the owner references.
    wait_for("every child and pod to be collected", all_gone, READY_TIMEOUT_S)


def test_operator_killed_mid_reconcile_leaves_no_duplicates(
    api: Api, namespace: str, start_operator: Any, wait_for: Any
) -> None:
    path = f"{_clusters(namespace)}/demo"
    api.create(_clusters(namespace), _body("demo"))
    first = start_operator([namespace])
    config_path = f"/api/v1/namespaces/{namespace}/configmaps/demo-config"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while api.get(config_path) is None:  # the first child applied: the reconcile is under way
        assert time.monotonic() < deadline, first.log_text()
        time.sleep(0.01)
    first.kill()
    # Usually only some children exist now (the applies take tens of ms); either way the
    # restarted operator must converge on exactly one of each.
    partial = sum(len(objs) for objs in _children(api, namespace, "demo").values())
    print(f"children when the operator was killed: {partial} of 11")

    second = start_operator([namespace])
    wait_for("the cluster to be Ready", _ready_at(api, path, 1), READY_TIMEOUT_S)
    counts = {kind: len(objs) for kind, objs in _children(api, namespace, "demo").items()}
    assert counts == {
        "ConfigMap": 1,
        "ServiceAccount": 1,
        "Role": 1,
        "RoleBinding": 1,
        "NetworkPolicy": 2,
        "Service": 3,
        "Deployment": 2,
    }
    engine_sets = api.list(
        f"/apis/apps/v1/namespaces/{namespace}/replicasets",
        "app.kubernetes.io/component=engine,block.dev/cluster=demo",
    )
    assert len(engine_sets) == 1  # no second rollout from the restart
    pods = api.list(f"/api/v1/namespaces/{namespace}/pods", f"{meta.CLUSTER_LABEL}=demo")
    assert len(pods) == 3  # 2 engines + 1 gateway
    assert "Traceback" not in second.log_text()


def _front_doors_at(api: Api, path: str, doors: list[str]) -> Callable[[], dict[str, Any] | None]:
    """A check: the cluster is Ready at generation 1 with these front doors."""
    ready = _ready_at(api, path, 1)

    def check() -> dict[str, Any] | None:
        obj = ready()
        return obj if obj and obj["status"].get("frontDoors") == doors else None

    return check


def test_inference_pool_crd_installed_later_adds_the_picker_and_a_valid_pool(
    api: Api, namespace: str, inference_pool_crd: Any, start_operator: Any, wait_for: Any
) -> None:
    start_operator([namespace])
    # The Gateway's proxies carry the pool's requests to the sidecars: the NetworkPolicy must
    # admit them for the InferencePool to count as a front door.
    proxies = {"namespaceSelector": {"matchLabels": {"gateway": "proxies"}}}
    created = api.create(
        _clusters(namespace),
        _body("demo", scheduler={"replicas": 2}, networkPolicy={"ingressFrom": [proxies]}),
    )
    path = f"{_clusters(namespace)}/demo"
    wait_for(
        "Ready with the gateway only", _front_doors_at(api, path, ["Gateway"]), READY_TIMEOUT_S
    )
    assert api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/demo-epp") is None

    # The Gateway API Inference Extension's CRD, as published: the next reconcile (the resync
    # timer at the latest) adds the endpoint picker and the pool, which the apiserver validates
    # against that CRD's schema (a rejected pool would make the cluster Degraded, not Ready).
    inference_pool_crd()
    both = ["Gateway", "InferencePool"]
    cluster = wait_for(
        "Ready with both front doors", _front_doors_at(api, path, both), READY_TIMEOUT_S
    )
    status = cluster["status"]
    assert status["inferencePool"] == "demo-pool"
    assert status["eppReadyReplicas"] == 2
    assert _condition(cluster, "Degraded")["status"] == "False"

    pools = f"/apis/inference.networking.k8s.io/v1/namespaces/{namespace}/inferencepools"
    pool = api.get(f"{pools}/demo-pool")
    assert pool is not None
    engine = _deployment(api, namespace, "demo-engine")
    assert pool["spec"]["selector"] == {"matchLabels": engine["spec"]["selector"]["matchLabels"]}
    assert pool["spec"]["targetPorts"] == [{"number": meta.PREDICTOR_PORT}]
    assert pool["spec"]["endpointPickerRef"] == {
        "group": "", "kind": "Service", "name": "demo-epp", "port": {"number": 9002},
        "failureMode": "FailOpen",
    }  # fmt: skip
    (owner,) = pool["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("BlockCluster", created["metadata"]["uid"])

    epp = _deployment(api, namespace, "demo-epp")
    assert epp["spec"]["replicas"] == 2
    container = _container(epp, "epp")
    assert container["command"] == ["block", "epp"]
    args = container["args"]
    for flag, value in (("--host", "0.0.0.0"), ("--grpc-port", "9002"), ("--admin-port", "9090"),
                        ("--discover", "k8s"), ("--namespace", namespace),
                        ("--service", "demo-engine"), ("--policy", "block")):  # fmt: skip
        assert args[args.index(flag) + 1] == value, flag
    assert container["readinessProbe"]["grpc"] == {"port": 9002, "service": "readiness"}
    assert epp["spec"]["template"]["spec"]["serviceAccountName"] == "demo-epp"
    service = api.get(f"/api/v1/namespaces/{namespace}/services/demo-epp")
    assert service is not None
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert (ports["grpc"]["port"], ports["grpc"]["appProtocol"]) == (9002, "http2")
    assert ports["admin"]["port"] == 9090
    role = api.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles/demo-epp")
    assert role is not None
    assert role["rules"] == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                              "verbs": ["get", "list", "watch"]}]  # fmt: skip
    binding = api.get(
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings/demo-epp"
    )
    assert binding is not None and binding["subjects"][0]["name"] == "demo-epp"

    # The schema is the real one: a pool without target ports is refused.
    bad = {**pool, "metadata": {"name": "bad"}, "spec": {**pool["spec"], "targetPorts": []}}
    with pytest.raises(api.Error) as caught:
        api.create(pools, bad)
    assert caught.value.code == 422

    # A deleted pool comes back (its events are watched like any child's).
    old_uid = pool["metadata"]["uid"]
    api.delete(f"{pools}/demo-pool")
    wait_for(
        "the pool to come back",
        lambda: (
            (api.get(f"{pools}/demo-pool") or {}).get("metadata", {}).get("uid")
            not in (None, old_uid)
        ),
        READY_TIMEOUT_S,
    )

    # And everything goes with the BlockCluster (owner references).
    api.delete(path)
    wait_for(
        "the pool and the picker to be collected",
        lambda: not api.list(pools) and not _children(api, namespace, "demo")["Deployment"],
        READY_TIMEOUT_S,
    )
