"""The operator's autoscaler against a real HTTP gateway stand-in serving load figures."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from block.operator import autoscaling as seam
from block.operator import provisioning
from block.operator.blockcluster import meta, specs
from block.simulator.latency import LatencyModel
from block.simulator.replica import ReplicaConfig
from block.wire.autoscaling import DrainRequest, LoadReport, ReplicaLoad

SIZES = [(1000, 150), (600, 250), (1500, 80)]


class Gateway:
    def __init__(self) -> None:
        self.report = LoadReport(interval_seconds=5.0, arrivals=0, sizes=SIZES)
        self.drained: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()

        async def load(_: web.Request) -> web.Response:
            return web.json_response(self.report.model_dump())

        async def drain(req: web.Request) -> web.Response:
            body = DrainRequest.model_validate(await req.json())
            self.drained.append(body.replica)
            return web.json_response({"replica": body.replica, "draining": True})

        app.router.add_get(provisioning.LOAD_PATH, load)
        app.router.add_post(provisioning.DRAIN_PATH, drain)
        return app


class Pods:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        self.calls.append((name, annotations))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def spec(replicas: int) -> specs.BlockClusterSpec:
    return specs.BlockClusterSpec.model_validate({
        "model": "meta-llama/Llama-2-7b-hf", "engine": {"kind": "twin", "gpu": "a100"},
        "replicas": replicas, "minReplicas": 1, "maxReplicas": 6,
        "slo": {"ttftSeconds": 1.0},
        "autoscaling": {"enabled": True, "windowSeconds": 20, "cooldownSeconds": 10},
    })  # fmt: skip


def replicas(n: int, busy: int, draining: str = "") -> list[ReplicaLoad]:
    return [ReplicaLoad(name=f"eng-{i}", num_running=busy, draining=f"eng-{i}" == draining)
            for i in range(n)]  # fmt: skip


async def test_timer_scales_up_then_drains_before_scaling_down(
    aiohttp_server: Any, latency: LatencyModel
) -> None:
    gw = Gateway()
    server = await aiohttp_server(gw.app())
    pods, events, clock = Pods(), [], Clock()
    cluster = meta.ClusterRef("bc", "ns", "uid-1")
    async with aiohttp.ClientSession() as session:
        advisor = provisioning.PredictiveAdvisor(
            session=session, pods=pods,
            events=lambda c, reason, msg: events.append((reason, msg)),
            gateway_url=lambda c: str(server.make_url("")).rstrip("/"),
            latency_for=lambda s: latency,
            replica_config=ReplicaConfig("sarathi", max_num_batched_tokens=512, max_num_seqs=48),
            interval_s=5.0, lead_s=5.0, drain_timeout_s=60.0, clock=clock,
        )  # fmt: skip
        status = specs.BlockClusterStatus()
        # Heavy load on two replicas: scale up at once.
        gw.report = LoadReport(interval_seconds=5.0, arrivals=200, sizes=SIZES,
                               replicas=replicas(2, busy=40))  # fmt: skip
        up = await advisor.advise(cluster, spec(2), status)
        assert up is not None and up > 2
        assert events[-1][0] == "AutoscalerDecision" and "N=2" in events[-1][1]
        # The status part says the same: the sizes simulated, what each predicts, the target.
        last = advisor.last_decision(cluster)
        assert last is not None and last.target_replicas == up and last.current_replicas == 2
        assert last.decision.startswith("scale up") and last.draining is None
        sizes = [p.replicas for p in last.predicted]
        assert sizes == sorted(sizes) and 2 in sizes and up in sizes
        at_up = next(p for p in last.predicted if p.replicas == up)
        at_two = next(p for p in last.predicted if p.replicas == 2)
        # More replicas, a better prediction (absent: requests still waiting at the end).
        assert at_two.p99_seconds is None or (
            at_up.p99_seconds is not None and at_up.p99_seconds < at_two.p99_seconds
        )
        # Load gone on four replicas: after the stabilisation window, drain one first.
        gw.report = LoadReport(interval_seconds=5.0, arrivals=1, sizes=SIZES,
                               replicas=replicas(4, busy=1))  # fmt: skip
        answers = []
        while not gw.drained and len(answers) < 12:
            clock.t += 5.0
            answers.append(await advisor.advise(cluster, spec(4), status))
        # The forecast decays first (it may still ask for more), then a drain starts; the
        # count never drops before the drain.
        assert all(a is None or a >= 4 for a in answers)
        assert len(gw.drained) == 1 and not pods.calls
        victim = gw.drained[0]
        drained = advisor.last_decision(cluster)
        assert drained is not None and drained.draining == victim
        # Still busy: keep waiting. Idle: annotate the pod, then answer the lower count.
        gw.report = LoadReport(interval_seconds=5.0, arrivals=1, sizes=SIZES,
                               replicas=replicas(4, busy=1, draining=victim))  # fmt: skip
        clock.t += 5.0
        assert await advisor.advise(cluster, spec(4), status) is None
        gw.report = LoadReport(
            interval_seconds=5.0,
            arrivals=1,
            sizes=SIZES,
            replicas=[
                r if r.name != victim else ReplicaLoad(name=victim, draining=True)
                for r in replicas(4, busy=1)
            ],
        )
        clock.t += 5.0
        down = await advisor.advise(cluster, spec(4), status)
        assert down == 3
        assert pods.calls == [(victim, {provisioning.DELETION_COST_ANNOTATION: "-1000"})]
        assert [e[0] for e in events][-1] == "ScaledDown"
        after = advisor.last_decision(cluster)
        assert after is not None and after.draining is None
        assert seam.bounded(spec(4), down) == 3


async def test_no_gateway_means_no_opinion(latency: LatencyModel) -> None:
    async with aiohttp.ClientSession() as session:
        advisor = provisioning.PredictiveAdvisor(
            session=session, pods=Pods(), events=lambda *a: None,
            gateway_url=lambda c: "http://127.0.0.1:9", latency_for=lambda s: latency,
            timeout_s=1.0,
        )  # fmt: skip
        cluster = meta.ClusterRef("bc", "ns", "uid-2")
        assert await advisor.advise(cluster, spec(2), specs.BlockClusterStatus()) is None


@pytest.fixture(scope="module")
def latency() -> LatencyModel:
    return LatencyModel.load("a100", "meta-llama/Llama-2-7b-hf")


async def test_operator_run_path_owns_the_session_from_startup_to_cleanup(
    aiohttp_server: Any, latency: LatencyModel
) -> None:
    from kubernetes import client

    from block.operator import kube, running
    from block.operator.settings import OperatorSettings

    gw = Gateway()
    server = await aiohttp_server(gw.app())
    settings = OperatorSettings(resync_interval_s=5.0, autoscaler_lead_s=5.0)
    api = client.ApiClient()
    service = running.autoscaler(settings, api)
    assert (service.interval_s, service.lead_s) == (5.0, 5.0)
    events: list[tuple[str, str]] = []
    service.events = lambda c, reason, msg: events.append((reason, msg))
    service.gateway_url = lambda c: str(server.make_url("")).rstrip("/")
    registry = running.build_registry(settings, kube.ClientKube(api), service)
    service.register(registry)
    # kopf keeps activity handlers in a private registry; its public API has no reader.
    activities = {(h.id, h.activity.value) for h in registry._activities.get_all_handlers()}
    assert {("autoscaler-session", "startup"), ("autoscaler-session", "cleanup")} <= activities
    cluster = meta.ClusterRef("bc", "ns", "uid-3")
    gw.report = LoadReport(interval_seconds=5.0, arrivals=200, sizes=SIZES,
                           replicas=replicas(2, busy=40))  # fmt: skip
    # Before start-up: no session, no opinion, nothing asked of the gateway.
    assert await service.advise(cluster, spec(2), specs.BlockClusterStatus()) is None
    assert not events
    await service.startup()
    up = await service.advise(cluster, spec(2), specs.BlockClusterStatus())
    assert up is not None and up > 2
    assert events and events[-1][0] == "AutoscalerDecision"
    session = service._advisor.session if service._advisor else None
    await service.cleanup()
    assert session is not None and session.closed
    assert await service.advise(cluster, spec(2), specs.BlockClusterStatus()) is None
    api.close()
