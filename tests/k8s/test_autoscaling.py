"""The operator's autoscaler against the real control plane and a stand-in gateway.

`block operator run` (resync every 2 s) reads load figures from an HTTP gateway stand-in that
reports the cluster's real engine pods; heavy load must raise the BlockCluster's replicas
through the scale subresource, light load must drain one pod (the gateway is told first), keep
the count while that pod is busy, and only then lower it, the drained pod being the one the
ReplicaSet removes (pod-deletion-cost). Every call carries the cluster's admin token.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from block.operator import provisioning
from block.wire.autoscaling import DrainRequest, LoadReport, ReplicaLoad

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from conftest import Api

pytestmark = pytest.mark.k8s

SIZES = [(1000, 150), (600, 250), (1500, 80)]
BUSY_POLLS_AFTER_DRAIN = 3  # the victim still holds requests for this many polls


class StandInGateway:
    """Serves `GET /v1/autoscaling/load` from the cluster's engine pods, records drains; like
    the real gateway, answers only the cluster's admin token (the Secret the operator made)."""

    def __init__(self, api: Api, namespace: str, cluster: str) -> None:
        self.api, self.namespace, self.cluster = api, namespace, cluster
        self.refused = 0  # calls without the right token
        self.authorized = 0
        self.heavy = True
        self.lock = threading.Lock()
        self.drains: list[tuple[str, int]] = []  # (pod, spec.replicas when told)
        self.victim_polls = 0
        self.replicas_while_busy: list[int] = []

    def pods(self) -> list[str]:
        selector = f"block.dev/cluster={self.cluster},app.kubernetes.io/component=engine"
        items = self.api.list(f"/api/v1/namespaces/{self.namespace}/pods", selector)
        return sorted(p["metadata"]["name"] for p in items
                      if not p["metadata"].get("deletionTimestamp"))  # fmt: skip

    def spec_replicas(self) -> int:
        path = f"/apis/block.dev/v1alpha1/namespaces/{self.namespace}/blockclusters/{self.cluster}"
        return int((self.api.get(path) or {})["spec"]["replicas"])

    def report(self) -> LoadReport:
        with self.lock:
            victim = self.drains[-1][0] if self.drains else None
            figures = []
            for name in self.pods():
                busy = 40 if self.heavy else 1
                if name == victim:
                    self.victim_polls += 1
                    busy = 1 if self.victim_polls <= BUSY_POLLS_AFTER_DRAIN else 0
                    if busy:
                        self.replicas_while_busy.append(self.spec_replicas())
                figures.append(ReplicaLoad(name=name, num_running=busy, draining=name == victim))
            return LoadReport(interval_seconds=2.0, arrivals=200 if self.heavy else 1,
                              sizes=SIZES, replicas=figures)  # fmt: skip

    def drain(self, body: DrainRequest) -> None:
        with self.lock:
            self.drains.append((body.replica, self.spec_replicas()))
            self.victim_polls = 0

    def admin_token(self) -> str | None:
        path = f"/api/v1/namespaces/{self.namespace}/secrets/{self.cluster}-admin"
        secret = self.api.get(path)
        return base64.b64decode(secret["data"]["token"]).decode() if secret else None

    def allowed(self, authorization: str | None) -> bool:
        token = self.admin_token()
        ok = token is not None and authorization == f"Bearer {token}"
        with self.lock:
            self.authorized += ok
            self.refused += not ok
        return ok

    def serve(self) -> tuple[ThreadingHTTPServer, str]:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path != provisioning.LOAD_PATH:
                    return self._reply(404, {"detail": "not found"})
                if not gateway.allowed(self.headers.get("Authorization")):
                    return self._reply(401, {"detail": "admin token required"})
                self._reply(200, gateway.report().model_dump())

            def do_POST(self) -> None:
                if self.path != provisioning.DRAIN_PATH:
                    return self._reply(404, {"detail": "not found"})
                if not gateway.allowed(self.headers.get("Authorization")):
                    return self._reply(401, {"detail": "admin token required"})
                length = int(self.headers.get("Content-Length", "0"))
                body = DrainRequest.model_validate_json(self.rfile.read(length))
                gateway.drain(body)
                self._reply(200, {"replica": body.replica, "draining": body.draining})

            def log_message(self, *_: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        host, port = server.server_address[:2]
        return server, f"http://{host!s}:{port}"


@pytest.fixture
def gateway(api: Api, namespace: str) -> Iterator[tuple[StandInGateway, str]]:
    gw = StandInGateway(api, namespace, "auto")
    server, url = gw.serve()
    yield gw, url
    server.shutdown()
    server.server_close()


def test_timer_scales_up_then_drains_before_scaling_down(
    api: Api,
    namespace: str,
    gateway: tuple[StandInGateway, str],
    start_operator: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    gw, url = gateway
    start_operator(
        [namespace],
        args=["--image=block:test", "--resync-interval=2"],
        env={"BLOCK_OPERATOR_AUTOSCALER_GATEWAY_URL": url, "BLOCK_OPERATOR_AUTOSCALER_LEAD_S": "2"},
    )
    path = f"/apis/block.dev/v1alpha1/namespaces/{namespace}/blockclusters"
    api.create(path, {
        "apiVersion": "block.dev/v1alpha1", "kind": "BlockCluster", "metadata": {"name": "auto"},
        "spec": {"model": "meta-llama/Llama-2-7b-hf", "engine": {"kind": "twin", "gpu": "a100"},
                 "replicas": 2, "minReplicas": 1, "maxReplicas": 4, "slo": {"ttftSeconds": 1.0},
                 "autoscaling": {"enabled": True, "windowSeconds": 10, "cooldownSeconds": 4}},
    })  # fmt: skip
    wait_for("two engine pods", lambda: len(gw.pods()) == 2, 90)
    # Heavy load: the advisor's answer goes through the scale subresource.
    wait_for("a scale-up", lambda: gw.spec_replicas() > 2, 90)
    # The decision is in the status too, through the real apiserver's schema and merge patch.
    status = wait_for(
        "status.autoscaling",
        lambda: ((api.get(f"{path}/auto") or {}).get("status") or {}).get("autoscaling"),
        60,
    )
    assert status["targetReplicas"] >= status["currentReplicas"] >= 1
    assert status["decision"] and status["lastDecisionTime"].endswith("Z")
    assert all(p["replicas"] >= 1 for p in status["predicted"]) and status["predicted"]
    up = wait_for("the new engine pods", lambda: (n := gw.spec_replicas()) == len(gw.pods()) and n,
                  90)  # fmt: skip
    # Light load: the gateway is told to drain one pod before the count drops.
    gw.heavy = False
    wait_for("a drain request", lambda: gw.drains, 120)
    victim, replicas_at_drain = gw.drains[0]
    wait_for(
        "the drain in the status",
        lambda: (
            ((api.get(f"{path}/auto") or {}).get("status") or {})
            .get("autoscaling", {})
            .get("draining")
            == victim
        ),
        60,
    )
    assert replicas_at_drain >= up  # the count was not lowered before the drain
    wait_for("a scale-down", lambda: gw.spec_replicas() < replicas_at_drain, 90)
    # While the victim held requests the count stayed; the ReplicaSet removed that very pod.
    assert gw.replicas_while_busy and set(gw.replicas_while_busy) == {replicas_at_drain}
    wait_for(f"{victim} to go", lambda: victim not in gw.pods(), 60)
    # Every call carried the admin token of the cluster's Secret (issue 20, item 1).
    assert gw.authorized > 0 and gw.refused == 0
