"""The gateway's autoscaling API over real engine twins and predictor sidecars on loopback:
the load report follows the traffic, a drain stops routing and reports the replica idle once
its requests finish, and the operator's `PredictiveAdvisor` drives a drain through it."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import aiohttp

from block.operator import provisioning
from block.operator.blockcluster import meta, specs
from block.simulator.replica import ReplicaConfig
from block.wire.autoscaling import DrainStatus, LoadReport

MODEL = "meta-llama/Llama-2-7b-hf"
ADMIN_TOKEN = "admin-3f9c"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def admin_gateway(gateway: Any, replicas: Any, tmp_path: Path, **kw: Any) -> Any:
    """A gateway whose admin API opens with ADMIN_TOKEN (as the operator's Secret does)."""
    token = tmp_path / "admin-token"
    token.write_text(ADMIN_TOKEN + "\n")
    return await gateway(replicas, admin_token_file=token, **kw)


def body(tokens: int, stream: bool = False) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Tell a story about rivers and hills.",
            "max_tokens": tokens, "ignore_eos": True, "stream": stream}  # fmt: skip


async def post(gw: Any, payload: dict[str, Any]) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(gw.make_url("/v1/completions"), json=payload) as r,
    ):
        await r.read()
        return r.status, r.headers.get("x-gateway-destination-endpoint-served", "")


async def load(gw: Any) -> LoadReport:
    async with (
        aiohttp.ClientSession(headers=ADMIN) as s,
        s.get(gw.make_url("/v1/autoscaling/load")) as r,
    ):
        assert r.status == 200
        return LoadReport.model_validate(await r.json())


async def drain(gw: Any, payload: Any) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(headers=ADMIN) as s,
        s.post(gw.make_url("/v1/autoscaling/drain"), json=payload) as r,
    ):
        return r.status, await r.json(content_type=None)


async def metric(gw: Any, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(gw.make_url("/metrics")) as r:
        text = await r.text()
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith(name) and ln[len(name)] in "{ ")  # fmt: skip


async def test_load_report_follows_traffic_and_bad_drains_are_4xx(
    cluster: Any, gateway: Any, tmp_path: Path
) -> None:
    replicas = await cluster(2)
    gw = await admin_gateway(gateway, replicas, tmp_path, policy="block")
    empty = await load(gw)
    assert (empty.arrivals, empty.sizes) == (0, [])
    assert sorted(r.name for r in empty.replicas) == sorted(r.name for r in replicas)
    assert all(r.ready and not r.draining for r in empty.replicas)
    plain = [post(gw, body(5)) for _ in range(6)]
    streamed = [post(gw, body(7, stream=True)) for _ in range(2)]
    results = await asyncio.gather(*plain, *streamed)
    assert [status for status, _ in results] == [200] * 8
    report = await load(gw)
    assert report.arrivals == 8
    assert 0 < report.interval_seconds <= 60.0
    # Generated lengths as the engine reported them (usage) or streamed them (events).
    assert sorted(out for _, out in report.sizes) == [5] * 6 + [7] * 2
    assert all(prompt > 1 for prompt, _ in report.sizes)
    # Everything finished: every replica's fresh figures say idle.
    assert all(r.num_running + r.num_waiting == 0 for r in report.replicas)
    # Bad drains: clear 4xx problems, nothing drained.
    status, problem = await drain(gw, {"replica": replicas[0].name, "draining": "soon"})
    assert status == 400 and "draining" in problem["detail"]
    status, problem = await drain(gw, {"pod": replicas[0].name})
    assert status == 400 and "replica" in problem["detail"]
    status, problem = await drain(gw, {"replica": "no-such-pod"})
    assert status == 404 and replicas[0].name in problem["detail"]
    assert (await drain(gw, {"replica": replicas[0].name}))[0] == 200
    status, problem = await drain(gw, {"replica": replicas[1].name})
    assert status == 409 and "last replica" in problem["detail"]
    assert await metric(gw, "block_scheduler_draining_replicas") == 1


async def test_drain_stops_routing_and_reports_idle_once_requests_finish(
    cluster: Any, gateway: Any, tmp_path: Path
) -> None:
    a, b = await cluster(2)
    gw = await admin_gateway(gateway, [a, b], tmp_path, policy="round-robin")
    # Park long streams on `a`: drain `b` while they start, then undo it.
    assert (await drain(gw, {"replica": b.name}))[0] == 200
    long = [asyncio.create_task(post(gw, body(150, stream=True))) for _ in range(3)]
    await asyncio.sleep(0.3)
    status, answer = await drain(gw, {"replica": b.name, "draining": False})
    assert status == 200 and DrainStatus.model_validate(answer).draining is False
    status, answer = await drain(gw, {"replica": a.name})
    started = DrainStatus.model_validate(answer)
    assert status == 200 and started.draining
    assert started.num_running + started.num_waiting == 3
    # New requests avoid `a` while its streams run.
    short = await asyncio.gather(*(post(gw, body(3)) for _ in range(6)))
    assert collections.Counter(r for _, r in short) == {b.name: 6}
    busy = {r.name: r for r in (await load(gw)).replicas}
    assert busy[a.name].draining and busy[a.name].num_running + busy[a.name].num_waiting == 3
    assert not busy[b.name].draining
    assert await metric(gw, "block_scheduler_draining_replicas") == 1
    # Drained once the streams are over, as the operator polls it.
    assert [s for s, _ in await asyncio.gather(*long)] == [200] * 3
    for _ in range(50):
        idle = {r.name: r for r in (await load(gw)).replicas}[a.name]
        if idle.num_running + idle.num_waiting == 0:
            break
        await asyncio.sleep(0.1)
    assert idle.draining and idle.num_running + idle.num_waiting == 0
    # Undone: routed to again.
    assert (await drain(gw, {"replica": a.name, "draining": False}))[0] == 200
    again = await asyncio.gather(*(post(gw, body(3)) for _ in range(4)))
    assert {r for _, r in again} == {a.name, b.name}
    assert await metric(gw, "block_scheduler_draining_replicas") == 0


class Pods:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        self.calls.append((name, annotations))


async def test_operator_advisor_drains_through_the_real_gateway(
    cluster: Any, gateway: Any, resources: Any, tmp_path: Path
) -> None:
    n = 3
    replicas = await cluster(n)
    gw = await admin_gateway(gateway, replicas, tmp_path, policy="block")
    assert all(s == 200 for s, _ in await asyncio.gather(*(post(gw, body(4)) for _ in range(6))))
    spec = specs.BlockClusterSpec.model_validate({
        "model": MODEL, "engine": {"kind": "twin", "gpu": "a100"},
        "replicas": n, "minReplicas": 1, "maxReplicas": 6, "slo": {"ttftSeconds": 1.0},
        "autoscaling": {"enabled": True, "windowSeconds": 20, "cooldownSeconds": 10},
    })  # fmt: skip
    clock = [1000.0]
    pods, events = Pods(), []
    async with aiohttp.ClientSession(headers=ADMIN) as session:
        advisor = provisioning.PredictiveAdvisor(
            session=session, pods=pods,
            events=lambda c, reason, msg: events.append((reason, msg)),
            gateway_url=lambda c: str(gw.make_url("")).rstrip("/"),
            latency_for=lambda s: resources.latency,
            replica_config=ReplicaConfig("sarathi", max_num_batched_tokens=512, max_num_seqs=48),
            interval_s=5.0, lead_s=5.0, drain_timeout_s=60.0, clock=lambda: clock[0],
        )  # fmt: skip
        ref = meta.ClusterRef("bc", "ns", "uid-real-gateway")
        answers = []
        draining: list[str] = []
        while not draining and len(answers) < 12:
            clock[0] += 5.0
            answers.append(await advisor.advise(ref, spec, specs.BlockClusterStatus()))
            draining = [r.name for r in (await load(gw)).replicas if r.draining]
        # A quiet cluster: the advisor told the real gateway to drain one replica first.
        assert len(draining) == 1 and all(a is None for a in answers) and not pods.calls
        victim = draining[0]
        routed = await asyncio.gather(*(post(gw, body(3)) for _ in range(6)))
        assert victim not in {r for _, r in routed}
        # It is idle: the next tick marks its pod for deletion and lowers the count.
        clock[0] += 5.0
        assert await advisor.advise(ref, spec, specs.BlockClusterStatus()) == n - 1
        assert pods.calls == [(victim, {provisioning.DELETION_COST_ANNOTATION: "-1000"})]
        assert [reason for reason, _ in events][-1] == "ScaledDown"


async def test_admin_api_needs_the_admin_token_not_an_api_key(
    cluster: Any, gateway: Any, tmp_path: Path
) -> None:
    replicas = await cluster(2)
    keys = tmp_path / "keys"
    keys.write_text("client-key\n")
    gw = await admin_gateway(gateway, replicas, tmp_path, api_keys_file=keys)
    no_admin = await gateway(replicas)  # started without --admin-token-file
    client = {"Authorization": "Bearer client-key"}
    drain_body = {"replica": replicas[0].name}
    async with aiohttp.ClientSession() as s:
        for headers, status in [({}, 401), (client, 401), (ADMIN, 200)]:
            async with s.get(gw.make_url("/v1/autoscaling/load"), headers=headers) as r:
                assert r.status == status, headers
            async with s.get(gw.make_url("/v1/replicas"), headers=headers) as r:
                assert r.status == status, headers
        for headers in ({}, client):
            async with s.post(
                gw.make_url("/v1/autoscaling/drain"), json=drain_body, headers=headers
            ) as r:
                assert r.status == 401
                assert "client-key" not in await r.text()
        async with s.post(gw.make_url("/v1/completions"), json=body(2), headers=client) as r:
            assert r.status == 200  # the client key still serves inference
        async with s.post(
            no_admin.make_url("/v1/autoscaling/drain"), json=drain_body, headers=ADMIN
        ) as r:
            assert r.status == 403 and "admin-token-file" in await r.text()
        async with s.get(gw.make_url("/metrics")) as r:
            assert r.status == 200  # Prometheus needs no credential
    # No replica was drained by any of the refused calls.
    assert not any(r.draining for r in (await load(gw)).replicas)
