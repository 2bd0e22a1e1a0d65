"""The pure renderers: what a BlockCluster becomes, object by object."""

from __future__ import annotations

from typing import Any

import pytest

from block.operator.blockcluster import (
    children,
    config_objects,
    engine_objects,
    epp_objects,
    meta,
    pool_objects,
    specs,
)

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


def _names(objs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(o["kind"], o["metadata"]["name"]) for o in objs]


def test_without_the_inference_pool_api_only_the_standalone_gateway_is_rendered() -> None:
    assert _names(children.render(CLUSTER, _spec(), SETTINGS)) == [
        ("ConfigMap", "demo-config"),
        ("ServiceAccount", "demo-scheduler"),
        ("Role", "demo-scheduler"),
        ("RoleBinding", "demo-scheduler"),
        ("NetworkPolicy", "demo-engine"),
        ("NetworkPolicy", "demo-scheduler"),
        ("Service", "demo-engine"),
        ("Service", "demo-engine-headless"),
        ("Deployment", "demo-engine"),
        ("Service", "demo-scheduler"),
        ("Deployment", "demo-scheduler"),
    ]


def test_with_the_inference_pool_api_the_picker_and_the_pool_come_last() -> None:
    without = children.render(CLUSTER, _spec(), SETTINGS)
    objs = children.render(CLUSTER, _spec(), SETTINGS, inference_pool=True)
    assert objs[: len(without)] == without  # the standalone gateway stays
    assert _names(objs[len(without) :]) == [
        ("NetworkPolicy", "demo-epp"),
        ("ServiceAccount", "demo-epp"),
        ("Role", "demo-epp"),
        ("RoleBinding", "demo-epp"),
        ("Service", "demo-epp"),
        ("Deployment", "demo-epp"),
        ("InferencePool", "demo-pool"),
    ]


@pytest.mark.parametrize("inference_pool", [False, True])
def test_every_child_is_owned_labelled_and_namespaced(inference_pool: bool) -> None:
    objs = children.render(CLUSTER, _spec(), SETTINGS, inference_pool=inference_pool)
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
            "args": ["--max-model-len", "4096"],
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
    assert args[-2:] == ["--max-model-len", "4096"]  # user arguments come last
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


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


READ_ENDPOINTSLICES = [
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["get", "list", "watch"],
    }
]


def test_standalone_gateway_runs_envoy_over_the_headless_engine_service() -> None:
    objs = children.render(CLUSTER, _spec(scheduler={"policy": "llumnix", "replicas": 2}), SETTINGS)
    deployment = _by_kind(objs, "Deployment", "demo-scheduler")
    assert deployment["spec"]["replicas"] == 2
    container = _container(deployment, "scheduler")
    args = container["args"]
    assert container["command"] == ["block", "gateway"]
    assert _arg(args, "--host") == "0.0.0.0"
    assert _arg(args, "--port") == str(meta.SCHEDULER_PORT)
    assert _arg(args, "--policy") == "llumnix"
    assert _arg(args, "--discover") == "k8s"
    assert _arg(args, "--service") == "demo-engine"
    assert _arg(args, "--namespace") == "serving"
    # Envoy's hosts: every ready replica's sidecar, by the headless Service's full DNS name.
    assert _arg(args, "--replicas-dns") == (
        f"demo-engine-headless.serving.svc.cluster.local:{meta.PREDICTOR_PORT}"
    )
    # The picker's and Envoy's admin ports stay on loopback (the command's defaults).
    assert not {"--grpc-port", "--admin-port", "--envoy-admin-port"} & set(args)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "demo-scheduler"
    assert _by_kind(objs, "Role", "demo-scheduler")["rules"] == READ_ENDPOINTSLICES
    binding = _by_kind(objs, "RoleBinding", "demo-scheduler")
    assert binding["subjects"][0]["name"] == "demo-scheduler"


def test_gateway_probes_go_through_envoy_and_envoy_gets_a_writable_tmp() -> None:
    deployment = _by_kind(
        children.render(CLUSTER, _spec(), SETTINGS), "Deployment", "demo-scheduler"
    )
    container = _container(deployment, "scheduler")
    assert container["ports"] == [
        {"name": "http", "containerPort": meta.SCHEDULER_PORT, "protocol": "TCP"}
    ]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["runAsNonRoot"] is True
    # Envoy's bootstrap is written under a temporary folder: /tmp must be a writable volume.
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    service = _by_kind(children.render(CLUSTER, _spec(), SETTINGS), "Service", "demo-scheduler")
    assert service["spec"]["ports"][0] == {
        "name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"
    }  # fmt: skip


def test_headless_engine_service_resolves_to_ready_sidecars() -> None:
    objs = children.render(CLUSTER, _spec(), SETTINGS)
    headless = _by_kind(objs, "Service", "demo-engine-headless")
    engine = _by_kind(objs, "Deployment", "demo-engine")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False
    assert headless["spec"]["selector"] == engine["spec"]["selector"]["matchLabels"]
    (port,) = headless["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("http", meta.PREDICTOR_PORT, "http")
    # The ClusterIP Service stays: its clusterIP cannot be changed in place on old clusters.
    assert "clusterIP" not in _by_kind(objs, "Service", "demo-engine")["spec"]


def test_cluster_domain_is_the_operators_setting() -> None:
    settings = meta.RenderSettings(block_image="block:test", cluster_domain="corp.example")
    assert engine_objects.replicas_dns(CLUSTER, settings) == (
        f"demo-engine-headless.serving.svc.corp.example:{meta.PREDICTOR_PORT}"
    )


def test_inference_pool_selects_the_engine_pods_at_the_sidecar_port() -> None:
    objs = children.render(CLUSTER, _spec(), SETTINGS, inference_pool=True)
    pool = _by_kind(objs, "InferencePool", "demo-pool")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    engine = _by_kind(objs, "Deployment", "demo-engine")
    assert pool["spec"] == {
        "selector": {"matchLabels": engine["spec"]["selector"]["matchLabels"]},
        "targetPorts": [{"number": meta.PREDICTOR_PORT}],
        "appProtocol": "http",
        "endpointPickerRef": {
            "group": "",
            "kind": "Service",
            "name": "demo-epp",
            "port": {"number": 9002},
            "failureMode": "FailOpen",
        },
    }
    assert pool_objects.name(CLUSTER) == "demo-pool"
    # The picker's Service has the port the pool names.
    service = _by_kind(objs, "Service", "demo-epp")
    assert 9002 in [p["port"] for p in service["spec"]["ports"]]


def test_epp_serves_grpc_and_admin_on_every_interface() -> None:
    spec = _spec(scheduler={"policy": "block-ttft", "replicas": 3, "image": "block:custom"})
    objs = children.render(CLUSTER, spec, SETTINGS, inference_pool=True)
    deployment = _by_kind(objs, "Deployment", "demo-epp")
    assert deployment["spec"]["replicas"] == 3
    container = _container(deployment, "epp")
    assert container["command"] == ["block", "epp"]
    assert container["image"] == "block:custom"
    args = container["args"]
    assert _arg(args, "--host") == "0.0.0.0"
    assert (_arg(args, "--grpc-port"), _arg(args, "--admin-port")) == ("9002", "9090")
    assert _arg(args, "--policy") == "block-ttft"
    assert (_arg(args, "--discover"), _arg(args, "--service")) == ("k8s", "demo-engine")
    assert _arg(args, "--namespace") == "serving"
    assert "--replicas-dns" not in args
    assert container["ports"] == [
        {"name": "grpc", "containerPort": 9002, "protocol": "TCP"},
        {"name": "admin", "containerPort": 9090, "protocol": "TCP"},
    ]
    assert container["readinessProbe"]["grpc"] == {"port": 9002, "service": "readiness"}
    assert container["livenessProbe"]["grpc"] == {"port": 9002, "service": "liveness"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "demo-epp"
    assert _by_kind(objs, "Role", "demo-epp")["rules"] == READ_ENDPOINTSLICES
    binding = _by_kind(objs, "RoleBinding", "demo-epp")
    assert binding["roleRef"]["name"] == "demo-epp"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "demo-epp", "namespace": "serving"}
    ]
    service = _by_kind(objs, "Service", "demo-epp")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [
        {"name": "grpc", "port": 9002, "targetPort": "grpc", "protocol": "TCP",
         "appProtocol": "http2"},
        {"name": "admin", "port": 9090, "targetPort": "admin", "protocol": "TCP",
         "appProtocol": "http"},
    ]  # fmt: skip


def test_epp_takes_the_gateway_args_it_understands() -> None:
    user = [
        "--envoy-concurrency", "4", "--max-attempts", "2", "--envoy-admin-port=9000",
        "--picker-timeout-ms", "50", "--slo-slack", "1.5", "--no-reject",
    ]  # fmt: skip
    spec = _spec(scheduler={"args": user})
    objs = children.render(CLUSTER, spec, SETTINGS, inference_pool=True)
    gateway_args = _container(_by_kind(objs, "Deployment", "demo-scheduler"), "scheduler")["args"]
    assert gateway_args[-len(user) :] == user  # last, so they win
    epp_args = _container(_by_kind(objs, "Deployment", "demo-epp"), "epp")["args"]
    assert epp_args[-5:] == ["--max-attempts", "2", "--slo-slack", "1.5", "--no-reject"]
    assert epp_objects.picker_args(["--replicas-dns=x:1", "--seed", "3"]) == ["--seed", "3"]


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
