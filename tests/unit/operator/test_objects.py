"""The pure renderers: what a BlockCluster becomes, object by object."""

from __future__ import annotations

from typing import Any

from block.operator.blockcluster import children, config_objects, meta, specs

CLUSTER = meta.ClusterRef(name="demo", namespace="serving", uid="1234-abcd", generation=3)
SETTINGS = meta.RenderSettings(block_image="block:test")


def _spec(**overrides: Any) -> specs.BlockClusterSpec:
    body: dict[str, Any] = {
        "model": "meta-llama/Llama-2-7b-hf",
        "engine": {"kind": "twin", "gpu": "a100"},
        "replicas": 2,
    }
    body.update(overrides)
    return specs.BlockClusterSpec.model_validate(body)


def _by_kind(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    (found,) = [c for c in containers if c["name"] == name]
    return dict(found)


def test_every_child_is_owned_labelled_and_namespaced() -> None:
    objs = children.render(CLUSTER, _spec(), SETTINGS)
    assert [(o["apiVersion"], o["kind"]) for o in objs] == [
        ("v1", "ConfigMap"),
        ("v1", "ServiceAccount"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
    ]
    for obj in objs:
        md = obj["metadata"]
        assert md["namespace"] == "serving"
        assert md["name"].startswith("demo-")
        assert md["labels"][meta.CLUSTER_LABEL] == "demo"
        assert md["labels"][meta.MANAGED_BY_LABEL] == meta.MANAGED_BY
        (owner,) = md["ownerReferences"]
        assert owner == {
            "apiVersion": "block.dev/v1alpha1",
            "kind": "BlockCluster",
            "name": "demo",
            "uid": "1234-abcd",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert (obj["apiVersion"], obj["kind"]) in children.CHILD_KINDS


def test_rendering_is_deterministic() -> None:
    assert children.render(CLUSTER, _spec(), SETTINGS) == children.render(
        CLUSTER, _spec(), SETTINGS
    )


def test_twin_engine_runs_block_engine_without_gpus_behind_the_predictor() -> None:
    objs = children.render(CLUSTER, _spec(), SETTINGS)
    deployment = _by_kind(objs, "Deployment", "demo-engine")
    assert deployment["spec"]["replicas"] == 2
    engine = _container(deployment, "engine")
    assert engine["image"] == "block:test"
    assert engine["command"] == ["block", "engine"]
    assert engine["args"][engine["args"].index("--gpu") + 1] == "a100"
    assert "nvidia.com/gpu" not in str(engine["resources"])
    predictor = _container(deployment, "predictor")
    assert predictor["command"] == ["block", "predictor"]
    url = predictor["args"][predictor["args"].index("--engine-url") + 1]
    assert url == f"http://127.0.0.1:{meta.ENGINE_PORT}"
    assert predictor["securityContext"]["runAsNonRoot"] is True
    # The Service fronts the predictor (in the request path), never the engine port.
    service = _by_kind(objs, "Service", "demo-engine")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert {"name": "http", "containerPort": meta.PREDICTOR_PORT, "protocol": "TCP"} in predictor[
        "ports"
    ]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_vllm_engine_asks_for_one_gpu_per_tensor_parallel_rank() -> None:
    spec = _spec(
        engine={
            "kind": "vllm",
            "image": "vllm/vllm-openai:v0",
            "tensorParallel": 4,
            "args": ["--max-num-seqs", "128"],
            "resources": {"requests": {"cpu": "8"}},
        }
    )
    deployment = _by_kind(children.render(CLUSTER, spec, SETTINGS), "Deployment", "demo-engine")
    engine = _container(deployment, "engine")
    assert engine["image"] == "vllm/vllm-openai:v0"
    assert "command" not in engine  # the image's own entry point
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert engine["resources"]["requests"] == {"nvidia.com/gpu": "4", "cpu": "8"}
    args = engine["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "4"
    assert args[-2:] == ["--max-num-seqs", "128"]  # user arguments come last, so they win
    assert "startupProbe" in engine


def test_engine_pods_prefer_distinct_nodes_and_keep_the_user_placement() -> None:
    spec = _spec(
        engine={
            "kind": "twin",
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        }
    )
    deployment = _by_kind(children.render(CLUSTER, spec, SETTINGS), "Deployment", "demo-engine")
    pod = deployment["spec"]["template"]["spec"]
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"][0]["key"] == "gpu"


def test_scheduler_discovers_the_engine_service_with_a_read_only_role() -> None:
    objs = children.render(CLUSTER, _spec(scheduler={"policy": "llumnix", "replicas": 2}), SETTINGS)
    deployment = _by_kind(objs, "Deployment", "demo-scheduler")
    assert deployment["spec"]["replicas"] == 2
    container = _container(deployment, "scheduler")
    args = container["args"]
    assert container["command"] == ["block", "scheduler"]
    assert args[args.index("--policy") + 1] == "llumnix"
    assert args[args.index("--discover") + 1] == "k8s"
    assert args[args.index("--service") + 1] == "demo-engine"
    assert args[args.index("--namespace") + 1] == "serving"
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "demo-scheduler"
    role = _by_kind(objs, "Role", "demo-scheduler")
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    binding = _by_kind(objs, "RoleBinding", "demo-scheduler")
    assert binding["subjects"][0]["name"] == "demo-scheduler"


def test_config_change_rolls_the_pods_and_replica_change_does_not() -> None:
    def template_hash(spec: specs.BlockClusterSpec) -> str:
        objs = children.render(CLUSTER, spec, SETTINGS)
        annotations = _by_kind(objs, "Deployment", "demo-engine")["spec"]["template"]["metadata"]
        return str(annotations["annotations"][meta.CONFIG_HASH_ANNOTATION])

    base = template_hash(_spec())
    assert template_hash(_spec(slo={"ttftSeconds": 1.5})) != base
    assert template_hash(_spec(replicas=3)) == base


def test_config_map_describes_the_cluster() -> None:
    spec = _spec(slo={"ttftSeconds": 1.5, "e2eSeconds": 20})
    config = config_objects.cluster_config(CLUSTER, spec)
    assert config["slo"] == {"ttftSeconds": 1.5, "e2eSeconds": 20}
    assert config["engineService"] == "demo-engine"
    assert config["replicas"] == {"min": 1, "max": 8}
