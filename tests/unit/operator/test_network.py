"""Issue 20, item 9: the engine listens on the pod's loopback only, and NetworkPolicies let only
the router reach the sidecars."""

from __future__ import annotations

from typing import Any

import pytest

from block import cli
from block.operator.blockcluster import children, meta, specs

CLUSTER = meta.ClusterRef(name="demo", namespace="ns", uid="u-1")
SETTINGS = meta.RenderSettings(block_image="block:t")


def _render(inference_pool: bool = False, **patch: Any) -> list[dict[str, Any]]:
    body = {"model": "llama-2-7b", "engine": {"kind": "twin", "gpu": "a100"}, **patch}
    spec = specs.BlockClusterSpec.model_validate(body)
    return children.render(CLUSTER, spec, SETTINGS, inference_pool=inference_pool)


def _get(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("kind", ["twin", "vllm"])
def test_engine_binds_loopback_and_only_the_sidecar_port_is_exposed(kind: str) -> None:
    engine_spec = {"kind": kind, "gpu": "a100", "image": "vllm/vllm-openai:v0"}
    objs = _render(engine=engine_spec)
    pod = _get(objs, "Deployment", "demo-engine")["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    engine, predictor = containers["engine"], containers["predictor"]
    args = engine["args"]
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert "ports" not in engine  # nothing on the pod IP
    url = predictor["args"][predictor["args"].index("--engine-url") + 1]
    assert url == f"http://127.0.0.1:{meta.ENGINE_PORT}"
    # The kubelet probes the pod IP: the engine's probes run inside its container.
    probes = [engine[p] for p in ("livenessProbe", "startupProbe", "readinessProbe") if p in engine]
    assert probes and all("exec" in p and "127.0.0.1" in p["exec"]["command"][-1] for p in probes)
    if kind == "twin":
        parsed = cli.build_parser().parse_args(["engine", *args])
        assert parsed.host == "127.0.0.1"
    for service in (o for o in objs if o["kind"] == "Service"):
        for port in service["spec"]["ports"]:
            assert port.get("targetPort") != meta.ENGINE_PORT and port["port"] != meta.ENGINE_PORT


def test_sidecars_admit_only_the_routers_and_the_named_peers() -> None:
    prometheus = {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}
    objs = _render(True, networkPolicy={"ingressFrom": [prometheus]})
    engine = _get(objs, "NetworkPolicy", "demo-engine")["spec"]
    deployment = _get(objs, "Deployment", "demo-engine")
    assert engine["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert engine["policyTypes"] == ["Ingress"]
    (rule,) = engine["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": meta.PREDICTOR_PORT}]
    routers = [_get(objs, "Deployment", n) for n in ("demo-scheduler", "demo-epp")]
    for router in routers:
        labels = router["spec"]["template"]["metadata"]["labels"]
        (peer,) = [
            p
            for p in rule["from"]
            if "podSelector" in p
            and p["podSelector"]["matchLabels"] == router["spec"]["selector"]["matchLabels"]
        ]
        assert peer["podSelector"]["matchLabels"].items() <= labels.items()
    assert prometheus in rule["from"] and len(rule["from"]) == 3
    gateway = _get(objs, "NetworkPolicy", "demo-scheduler")["spec"]
    assert gateway["ingress"] == [{"ports": [{"protocol": "TCP", "port": meta.SCHEDULER_PORT}]}]
    epp = _get(objs, "NetworkPolicy", "demo-epp")["spec"]
    ports = [{"protocol": "TCP", "port": p} for p in (meta.EPP_GRPC_PORT, meta.EPP_ADMIN_PORT)]
    assert epp["ingress"] == [{"ports": ports}]


def test_opting_out_opens_the_policies_instead_of_deleting_them() -> None:
    objs = _render(True, networkPolicy={"enabled": False})
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert [p["metadata"]["name"] for p in policies] == ["demo-engine", "demo-scheduler",
                                                         "demo-epp"]  # fmt: skip
    assert all(p["spec"]["ingress"] == [{}] for p in policies)
