"""Each routing policy, run by a live gateway over HTTP, routes as it is defined.

The fake sidecars report different predictions and load figures; the gateway's
`x-gateway-destination-endpoint-served` answer header (Envoy's) says where each request went.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import aiohttp
import pytest

from block.scheduler.replicas import Endpoint, ReplicaSet

BODY = {"model": "m", "prompt": "Tell me about the sea.", "max_tokens": 32}


async def post(
    gw: Any, body: dict[str, Any] | None = None, **headers: str
) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as s:
        resp = await s.post(gw.make_url("/v1/completions"), json=body or BODY, headers=headers)
        await resp.read()
        return resp


def name_of(fake: Any) -> str:
    return fake.replica_name


async def test_block_picks_lowest_predicted_e2e(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(3)
    for f, e2e in zip(fakes, (2.0, 0.5, 1.0), strict=True):
        f.e2e_s = e2e
    gw = await gateway(fakes, policy="block")
    for _ in range(3):
        resp = await post(gw)
        assert resp.status == 200
        assert resp.headers["x-gateway-destination-endpoint-served"] == name_of(fakes[1])
    # Every predictor was asked, with the prompt's estimated tokens and the capped prior.
    assert all(f.predicts == 3 for f in fakes)
    asked = fakes[0].predict_bodies[0]["candidates"][0]
    assert asked["output_tokens"] == 32  # prior 256 capped by max_tokens
    # The exact Llama-3 count (BOS + 6): the gateway tokenizes prompts for prefix hashes.
    assert asked["prompt_tokens"] == 7


async def test_block_ttft_picks_lowest_predicted_ttft(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(3)
    for f, ttft, e2e in zip(fakes, (0.3, 0.2, 0.01), (0.5, 0.4, 3.0), strict=True):
        f.ttft_s, f.e2e_s = ttft, e2e
    gw = await gateway(fakes, policy="block-ttft")
    assert (await post(gw)).headers["x-gateway-destination-endpoint-served"] == name_of(fakes[2])
    gw2 = await gateway(fakes, policy="block")
    assert (await post(gw2)).headers["x-gateway-destination-endpoint-served"] == name_of(fakes[1])


async def test_block_prefers_replicas_meeting_the_slo(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(3)
    # r0: best e2e but TTFT 0.9 s; r1: meets a 500 ms TTFT SLO with worse e2e; r2: worse still.
    for f, ttft, e2e in zip(fakes, (0.9, 0.2, 0.3), (1.0, 1.5, 2.0), strict=True):
        f.ttft_s, f.e2e_s = ttft, e2e
    gw = await gateway(fakes, policy="block")
    assert (await post(gw)).headers["x-gateway-destination-endpoint-served"] == name_of(fakes[0])
    resp = await post(gw, **{"x-block-slo-ttft-ms": "500"})
    assert resp.headers["x-gateway-destination-endpoint-served"] == name_of(fakes[1])
    # The cluster-wide SLO from settings applies when the request names none.
    gw2 = await gateway(fakes, policy="block", slo_ttft_s=0.5)
    assert (await post(gw2)).headers["x-gateway-destination-endpoint-served"] == name_of(fakes[1])


async def test_unmeetable_slo_is_429_unless_disabled(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(2, ttft_s=2.0, e2e_s=5.0, queue_s=3.2)
    gw = await gateway(fakes, policy="block")
    resp = await post(gw, **{"x-block-slo-ttft-ms": "100"})
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "4"  # about the best predicted queue, rounded up
    assert resp.content_type == "application/problem+json"
    assert all(f.served == 0 for f in fakes)
    lenient = await gateway(fakes, policy="block", reject_unmeetable=False)
    assert (await post(lenient, **{"x-block-slo-ttft-ms": "100"})).status == 200
    slack = await gateway(fakes, policy="block", slo_slack=30.0)
    assert (await post(slack, **{"x-block-slo-ttft-ms": "100"})).status == 200


async def test_full_queues_are_429_when_limited(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(2, num_waiting=8)
    gw = await gateway(fakes, policy="least-requests", max_waiting_per_replica=8)
    resp = await post(gw)
    assert resp.status == 429
    fakes[1].num_waiting = 7
    assert (await post(gw)).headers["x-gateway-destination-endpoint-served"] == name_of(fakes[1])


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("least-requests", 1),  # fewest running + waiting
        ("least-kv", 2),  # lowest KV usage
        ("llumnix", 0),  # most free KV after queued prefills, per running request
    ],
)
async def test_load_policies(sidecars: Any, gateway: Any, policy: str, expected: int) -> None:
    fakes = await sidecars(3)
    figures = [
        # running, waiting, kv used, kv total, waiting prefill tokens
        (2, 3, 500, 1000, 0),  # r0: freeness (1000-500)/2 = 250
        (3, 0, 900, 1000, 0),  # r1: load 3, freeness 33
        (8, 2, 100, 1000, 16000),  # r2: kv 10 %, freeness (1000-100-1000)/8 < 0
    ]
    for f, (run, wait, used, total, pre) in zip(fakes, figures, strict=True):
        f.num_running, f.num_waiting, f.kv_used, f.kv_total = run, wait, used, total
        f.waiting_prefill_tokens = pre
    gw = await gateway(fakes, policy=policy)
    resp = await post(gw)
    assert resp.headers["x-gateway-destination-endpoint-served"] == name_of(fakes[expected])
    # Load figures came from a fresh fan-out, not from anything cached.
    assert all(f.predicts == 1 for f in fakes)


async def test_cached_load_figures_skip_the_fan_out(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(2)
    gw = await gateway(fakes, policy="least-requests", load_figures="cached")
    for _ in range(4):
        assert (await post(gw)).status == 200
    assert all(f.predicts == 0 for f in fakes)


async def test_round_robin_takes_turns_and_asks_no_predictor(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(3)
    gw = await gateway(fakes, policy="round-robin")
    seen = [(await post(gw)).headers["x-gateway-destination-endpoint-served"] for _ in range(6)]
    names = sorted(name_of(f) for f in fakes)
    assert seen == names + names
    assert all(f.predicts == 0 for f in fakes)


async def test_random_spreads_over_all(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(3)
    gw = await gateway(fakes, policy="random", seed=7)
    counts = collections.Counter(
        [(await post(gw)).headers["x-gateway-destination-endpoint-served"] for _ in range(30)]
    )
    assert set(counts) == {name_of(f) for f in fakes}


async def test_power_of_k_asks_k_and_picks_the_less_loaded(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(4)
    for i, f in enumerate(fakes):
        f.num_running = 10 * (i + 1)
    gw = await gateway(fakes, policy="power-of-k", k=2, seed=3)
    chosen_ever = set()
    for _ in range(8):
        before = [f.predicts for f in fakes]
        resp = await post(gw)
        asked = [f for f, n in zip(fakes, before, strict=True) if f.predicts == n + 1]
        assert len(asked) == 2  # exactly k predictors asked per request
        chosen = resp.headers["x-gateway-destination-endpoint-served"]
        assert chosen == min(asked, key=lambda f: f.num_running).replica_name
        chosen_ever.add(chosen)
    assert name_of(fakes[3]) not in chosen_ever  # the most loaded never wins a pair


async def test_block_k_samples_k_predictors(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(4)
    gw = await gateway(fakes, policy="block-k2")
    for _ in range(5):
        assert (await post(gw)).status == 200
    assert sum(f.predicts for f in fakes) == 10


async def test_burst_does_not_herd(sidecars: Any, gateway: Any) -> None:
    # Identical predictions everywhere: without in-flight accounting, every request of a
    # burst would pick the same replica (the tie-break).
    # Requests outlast the burst (a finished one frees its replica: on a busy box the burst's
    # decisions can spread over more than 0.3 s). The fakes' figures never show a request, so
    # every dispatch stays unseen; the decisions may be spaced wider than the default 20 ms.
    fakes = await sidecars(4, generate_delay_s=2.0)
    gw = await gateway(fakes, policy="block", visibility_s=1.0)
    resps = await asyncio.gather(*(post(gw) for _ in range(8)))
    counts = collections.Counter(r.headers["x-gateway-destination-endpoint-served"] for r in resps)
    assert len(counts) == 4 and max(counts.values()) == 2


async def test_unseen_requests_count_only_until_figures_show_them() -> None:
    replicas = ReplicaSet()
    replicas.update([Endpoint("a", "http://a:1"), Endpoint("b", "http://b:1")])
    a, _ = replicas.all()
    t1 = replicas.dispatch(a, now=10.0)
    t2 = replicas.dispatch(a, now=11.0)
    assert a.unseen(since=float("-inf")) == 2
    assert a.unseen(since=10.5) == 1  # figures taken at 10.5 already hold the first
    t2.release()
    assert a.unseen(since=10.5) == 0
    t1.release()
    t1.release()  # idempotent
    assert a.unseen(since=float("-inf")) == 0


async def test_unseen_counts_active_dispatches_whatever_order_they_end_in() -> None:
    replicas = ReplicaSet()
    replicas.update([Endpoint("a", "http://a:1")])
    (a,) = replicas.all()
    tickets = [replicas.dispatch(a, now=t) for t in (10.0, 11.0, 12.0, 500.0)]
    tickets[2].release()  # one from the middle ends first
    assert a.unseen(since=10.5) == 2  # 11.0 and 500.0
    assert a.unseen(since=9.0) == 3
    assert a.unseen(since=600.0) == 0
    # A dispatch long before the figures is not counted however long it stays in flight.
    assert a.unseen(since=499.0) == 1 and len(a.active) == 3
    for t in tickets:
        t.release()
    assert not a.active and a.unseen(since=0.0) == 0
