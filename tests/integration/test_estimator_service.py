"""`block estimator serve` over real HTTP on loopback, with the shipped artifact."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from block.estimator import LengthEstimator
from block.estimator.service import create_app
from block.estimator.settings import EstimatorSettings
from block.wire.estimator import MAX_PROMPTS, EstimateResponse

PROMPTS = [
    "Write a detailed 1500-word essay on the causes of the First World War.",
    "What is the capital of France? Answer with one word.",
]


@pytest.fixture(scope="module")
def estimator() -> LengthEstimator:
    return LengthEstimator.load_default()


@pytest.fixture
async def client(estimator: LengthEstimator) -> AsyncIterator[TestClient]:
    settings = EstimatorSettings(max_body_bytes=64 * 1024)
    async with TestClient(TestServer(create_app(settings, estimator))) as c:
        yield c


async def test_one_prompt_gets_quantiles(client: TestClient, estimator: LengthEstimator) -> None:
    resp = await client.post("/v1/estimate", json={"prompt": PROMPTS[0]})
    assert resp.status == 200
    body = EstimateResponse.model_validate(await resp.json())
    assert body.model == estimator.name
    [est] = body.estimates
    [direct] = estimator.estimate([PROMPTS[0]])
    assert (est.quantiles.p10, est.quantiles.p50, est.quantiles.p90) == (
        direct.p10_tokens,
        direct.p50_tokens,
        direct.p90_tokens,
    )
    assert est.tokens == est.quantiles.p50


async def test_a_list_keeps_order(client: TestClient) -> None:
    resp = await client.post("/v1/estimate", json={"prompt": PROMPTS})
    assert resp.status == 200
    many = EstimateResponse.model_validate(await resp.json()).estimates
    singles = []
    for p in PROMPTS:
        r = await client.post("/v1/estimate", json={"prompt": p})
        singles.extend(EstimateResponse.model_validate(await r.json()).estimates)
    assert many == singles


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"prompt": ""}, 422),
        ({"prompt": "   "}, 422),
        ({"prompt": []}, 422),
        ({"prompt": ["ok", ""]}, 422),
        ({"prompt": 3}, 422),
        ({"prompt": "hi", "model": "x"}, 422),
        ({"prompt": ["x"] * (MAX_PROMPTS + 1)}, 422),
        ({}, 422),
    ],
)
async def test_bad_bodies_get_problem_json(
    client: TestClient, payload: dict[str, object], status: int
) -> None:
    resp = await client.post("/v1/estimate", json=payload)
    assert resp.status == status
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["status"] == status and problem["detail"]


async def test_unreadable_json_is_400(client: TestClient) -> None:
    resp = await client.post("/v1/estimate", data=b"{not json")
    assert resp.status == 400
    assert resp.content_type == "application/problem+json"


async def test_oversized_body_is_413(client: TestClient) -> None:
    resp = await client.post("/v1/estimate", json={"prompt": "word " * 20000})
    assert resp.status == 413
    assert resp.content_type == "application/problem+json"


async def test_huge_prompt_is_cut_not_rejected(estimator: LengthEstimator) -> None:
    settings = EstimatorSettings()  # default 8 MiB body limit
    async with TestClient(TestServer(create_app(settings, estimator))) as c:
        resp = await c.post("/v1/estimate", json={"prompt": "lorem ipsum " * 200_000})
        assert resp.status == 200
        [est] = EstimateResponse.model_validate(await resp.json()).estimates
        assert 1 <= est.quantiles.p10 <= est.tokens <= est.quantiles.p90


async def test_metrics_count_requests(client: TestClient) -> None:
    await client.post("/v1/estimate", json={"prompt": PROMPTS})
    await client.post("/v1/estimate", json={"prompt": ""})
    text = await (await client.get("/metrics")).text()
    assert 'block_estimator_requests_total{outcome="ok"} 1.0' in text
    assert 'block_estimator_requests_total{outcome="invalid"} 1.0' in text
    assert "block_estimator_prompts_total 2.0" in text
    assert "block_estimator_request_seconds_count 1.0" in text


async def test_healthz_names_the_model(client: TestClient, estimator: LengthEstimator) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json()) == {"status": "ok", "model": estimator.name}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_cli_serve_answers_over_loopback() -> None:
    port = _free_port()
    block = Path(sys.executable).with_name("block")
    proc = subprocess.Popen(
        [str(block), "estimator", "serve", "--port", str(port), "--log-level", "WARNING"],
        env={**os.environ, "BLOCK_ESTIMATOR_WORKERS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for _ in range(200):
                try:
                    async with session.get(f"{url}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    await asyncio.sleep(0.1)
            async with session.post(f"{url}/v1/estimate", json={"prompt": PROMPTS[1]}) as r:
                assert r.status == 200
                body = EstimateResponse.model_validate(json.loads(await r.text()))
        assert body.estimates[0].tokens >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_serve_rejects_a_missing_artifact(tmp_path: Path) -> None:
    block = Path(sys.executable).with_name("block")
    out = subprocess.run(
        [str(block), "estimator", "serve", "--artifact", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "unreadable" in out.stderr and "Traceback" not in out.stderr
