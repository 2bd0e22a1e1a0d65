"""The gateway over real engine twins and predictor sidecars on loopback.

Clients are the `openai` package and plain aiohttp; Envoy's
`x-gateway-destination-endpoint-served` answer header says where each request went.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import aiohttp
import openai
import pytest

MODEL = "meta-llama/Llama-2-7b-hf"
SHORT = {"model": MODEL, "prompt": "Say hello.", "max_tokens": 4, "ignore_eos": True}


def client(gw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(gw.make_url("/v1")), api_key="none", max_retries=0)


async def post(gw: Any, body: dict[str, Any] | None = None) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(gw.make_url("/v1/completions"), json=body or SHORT) as r,
    ):
        return r.status, r.headers.get("x-gateway-destination-endpoint-served", ""), await r.read()


async def metric(gw: Any, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(gw.make_url("/metrics")) as r:
        text = await r.text()
    return sum(
        float(ln.rsplit(" ", 1)[1])
        for ln in text.splitlines()
        if ln.startswith(name) and ln[len(name)] in "{ "
    )


async def test_openai_client_through_gateway_sidecar_and_twin(cluster: Any, gateway: Any) -> None:
    replicas = await cluster(2)
    gw = await gateway(replicas, policy="block")
    async with client(gw) as c:
        done = await c.completions.create(
            model=MODEL, prompt="Count to ten.", max_tokens=6, extra_body={"ignore_eos": True}
        )
        assert done.usage is not None and done.usage.completion_tokens == 6
        stream = await c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Name three rivers."}],
            max_tokens=5,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        pieces = [ch.choices[0].delta.content async for ch in stream if ch.choices]
        assert len([p for p in pieces if p]) == 5
        assert [m.id for m in (await c.models.list()).data] == [MODEL]
    # Every decision had predictions from the sidecars (no fallback).
    assert await metric(gw, "block_scheduler_fallbacks_total") == 0
    assert await metric(gw, "block_scheduler_decisions_total") == 2


@pytest.mark.parametrize(
    "policy",
    ["block", "block-ttft", "block-k2", "power-of-2", "llumnix", "least-requests", "least-kv",
     "round-robin", "random"],
)  # fmt: skip
async def test_every_policy_serves(cluster: Any, gateway: Any, policy: str) -> None:
    replicas = await cluster(2)
    gw = await gateway(replicas, policy=policy)
    results = await asyncio.gather(*(post(gw) for _ in range(4)))
    assert [r[0] for r in results] == [200] * 4
    assert {r[1] for r in results} <= {r.name for r in replicas}
    assert await metric(gw, "block_scheduler_fallbacks_total") == 0


async def load(replica: Any, n: int, tokens: int) -> list[asyncio.Task[Any]]:
    """n long requests straight to a replica's sidecar, left running."""
    session = aiohttp.ClientSession()
    body = {"model": MODEL, "prompt": "Write a long story.", "max_tokens": tokens,
            "ignore_eos": True}  # fmt: skip

    async def one() -> None:
        async with session.post(replica.url + "/v1/completions", json=body) as r:
            await r.read()

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    return [*tasks, asyncio.create_task(_close_after(session, list(tasks)))]


async def _close_after(session: aiohttp.ClientSession, tasks: list[asyncio.Task[Any]]) -> None:
    try:
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await session.close()


async def test_block_and_load_policies_avoid_the_busy_replica(cluster: Any, gateway: Any) -> None:
    busy, idle = await cluster(2)
    tasks = await load(busy, 24, 400)
    try:
        async with aiohttp.ClientSession() as s:
            held = 0
            for _ in range(100):  # until the busy sidecar's twin holds them
                async with s.get(busy.url + "/v1/state") as r:
                    state = await r.json()
                held = state["load"]["num_running"] + state["load"]["num_waiting"]
                if held >= 24:
                    break
                await asyncio.sleep(0.05)
            assert held >= 24
        for policy in ("block", "block-ttft", "least-requests"):
            gw = await gateway([busy, idle], policy=policy)
            chosen = [(await post(gw))[1] for _ in range(3)]
            assert chosen == [idle.name] * 3, policy
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_sidecar_killed_mid_run_changes_only_latency(cluster: Any, gateway: Any) -> None:
    replicas = await cluster(3)
    gw = await gateway(replicas, policy="block")
    body = {**SHORT, "max_tokens": 60}
    first = asyncio.gather(*(post(gw, body) for _ in range(9)))
    await asyncio.sleep(0.3)  # requests are in flight on every replica
    await replicas[0].stop_sidecar()  # its predictor and its proxy are gone
    results = await first
    results += await asyncio.gather(*(post(gw, SHORT) for _ in range(9)))
    assert [r[0] for r in results] == [200] * 18
    assert replicas[0].name not in {r[1] for r in results[9:]}


async def test_engine_killed_mid_stream(cluster: Any, gateway: Any) -> None:
    replicas = await cluster(2)
    gw = await gateway(replicas, policy="round-robin")
    doomed, healthy = sorted(replicas, key=lambda r: r.name)  # round-robin starts in order
    received = 0
    async with client(gw) as c:
        stream = await c.completions.create(
            model=MODEL, prompt="Tell a long tale.", max_tokens=400, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        with pytest.raises(openai.APIError) as err:
            async for _ in stream:
                received += 1
                if received == 3:
                    asyncio.get_running_loop().create_task(doomed.stop_engine())
        assert 3 <= received < 400
        assert "mid-stream" in err.value.message or "failed" in err.value.message
    # The next requests avoid the replica whose engine died.
    results = [await post(gw) for _ in range(4)]
    assert [(r[0], r[1]) for r in results] == [(200, healthy.name)] * 4
    # The stream's bytes never crossed the picker (Envoy relays them); the sidecar that ended
    # it with an error event counts it.
    async with aiohttp.ClientSession() as s, s.get(doomed.url + "/metrics") as r:
        text = await r.text()
    assert 'block_predictor_requests_total{outcome="upstream_error"} 1.0' in text


async def test_two_gateways_side_by_side(cluster: Any, gateway: Any) -> None:
    replicas = await cluster(2)
    a = await gateway(replicas, policy="block")
    b = await gateway(replicas, policy="least-requests")
    results = await asyncio.gather(*(post((a, b)[i % 2], SHORT) for i in range(12)))
    assert [r[0] for r in results] == [200] * 12
    used = collections.Counter(r[1] for r in results)
    assert set(used) == {r.name for r in replicas}


async def test_burst_spreads_over_idle_replicas(cluster: Any, gateway: Any) -> None:
    replicas = await cluster(4)
    gw = await gateway(replicas, policy="block")
    body = {**SHORT, "max_tokens": 8}
    results = await asyncio.gather(*(post(gw, body) for _ in range(12)))
    assert [r[0] for r in results] == [200] * 12
    counts = collections.Counter(r[1] for r in results)
    assert set(counts) == {r.name for r in replicas}
    assert max(counts.values()) <= 4, counts
