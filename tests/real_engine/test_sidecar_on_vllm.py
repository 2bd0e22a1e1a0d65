"""Block's sidecar in front of a stock vLLM: the OpenAI API proxied, the twin following the
engine, predictions answered (real-engine tier, see conftest.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import openai
import pytest

from block.predictor.reconciling import EngineFigures, parse_vllm_metrics
from block.wire.predict import PredictResponse, StateResponse

pytestmark = pytest.mark.real_engine
SERVED = "tiny-llama3"


async def engine_figures(http: aiohttp.ClientSession, url: str) -> EngineFigures:
    async with http.get(url + "/metrics") as r:
        return parse_vllm_metrics(await r.text())


async def twin_state(http: aiohttp.ClientSession, side: Any) -> StateResponse:
    async with http.get(side.url + "/v1/state") as r:
        return StateResponse.model_validate(await r.json())


async def stream_events(r: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    events = []
    async for line in r.content:
        if line.startswith(b"data: {"):
            events.append(json.loads(line[6:]))
    return events


async def test_completions_and_chat_streamed_and_not(sidecar: Any, real_engine: Any) -> None:
    side = await sidecar()
    client = openai.AsyncOpenAI(base_url=side.url + "/v1", api_key="unused", max_retries=0)
    done = await client.completions.create(
        model=SERVED, prompt="Once upon a time", max_tokens=12, extra_body={"ignore_eos": True}
    )
    assert done.usage is not None and done.usage.completion_tokens == 12
    assert done.usage.prompt_tokens == 5  # BOS + 4 tokens: counted as the sidecar counts
    chunks = [
        c async for c in await client.completions.create(
            model=SERVED, prompt="Hello", max_tokens=20, stream=True,
            extra_body={"ignore_eos": True},
        )
    ]  # fmt: skip
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) >= 15
    chat = await client.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": "Hi there"}], max_tokens=8,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert chat.usage is not None and chat.usage.completion_tokens == 8
    stream = await client.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": "Tell me more"}], max_tokens=10,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    parts = [c async for c in stream]
    assert parts[-1].usage is not None and parts[-1].usage.completion_tokens == 10
    twin = side.sidecar.twin
    assert not twin.requests, "every request left the twin"
    models = await client.models.list()
    assert [m.id for m in models.data] == [SERVED]


async def test_bad_input_is_the_engine_s_clear_400(
    sidecar: Any, http: aiohttp.ClientSession
) -> None:
    side = await sidecar()
    body = {"model": SERVED, "prompt": "x " * 5000, "max_tokens": 4}
    async with http.post(side.url + "/v1/completions", json=body) as r:
        assert r.status == 400
        assert "context length" in (await r.text())
    assert not side.sidecar.twin.requests


async def test_client_leaving_mid_stream_frees_engine_and_twin(
    sidecar: Any, real_engine: Any, http: aiohttp.ClientSession
) -> None:
    side = await sidecar()
    body = {"model": SERVED, "prompt": "Go on", "max_tokens": 3000, "ignore_eos": True,
            "stream": True}  # fmt: skip
    async with http.post(side.url + "/v1/completions", json=body) as r:
        assert r.status == 200
        for _ in range(5):
            await r.content.readuntil(b"\n\n")
        assert (await engine_figures(http, real_engine.url)).num_running == 1
        r.close()  # the client goes away mid-stream
    for _ in range(100):
        figures = await engine_figures(http, real_engine.url)
        if figures.num_running == 0 and not side.sidecar.twin.requests:
            break
        await asyncio.sleep(0.1)
    assert figures.num_running == 0, "the engine still runs the abandoned request"
    assert not side.sidecar.twin.requests, "the twin still holds the abandoned request"


async def test_twin_follows_a_burst_and_agrees_with_the_engine(
    sidecar: Any, real_engine: Any, http: aiohttp.ClientSession
) -> None:
    side = await sidecar()
    lengths = [40 + 7 * i for i in range(20)]

    async def one(i: int) -> None:
        body = {"model": SERVED, "prompt": f"request {i}: " + "word " * (10 * i),
                "max_tokens": lengths[i], "ignore_eos": True, "stream": True}  # fmt: skip
        async with http.post(side.url + "/v1/completions", json=body) as r:
            assert r.status == 200
            await r.read()

    burst = asyncio.gather(*(one(i) for i in range(20)))
    agree = total = 0
    while not burst.done():
        state = await twin_state(http, side)
        if state.engine is not None and state.drift is not None:
            total += 1
            agree += abs(state.drift.num_running) <= 1 and abs(state.drift.num_waiting) <= 1
        await asyncio.sleep(0.2)
    await burst
    assert total >= 5
    assert agree / total >= 0.8, f"twin within +-1 of the engine in {agree} of {total} scrapes"
    await asyncio.sleep(0.6)  # one more scrape after the last request
    state = await twin_state(http, side)
    assert state.engine is not None and state.engine.num_running == 0
    assert state.load.num_running == 0 and state.load.num_waiting == 0
    assert state.config.block_size == 128  # adopted from vllm:cache_config_info
    assert state.config.num_blocks == (await engine_figures(http, real_engine.url)).num_blocks


async def test_predict_answers_beside_a_real_engine(
    sidecar: Any, http: aiohttp.ClientSession
) -> None:
    side = await sidecar()
    body = {"model": SERVED, "prompt": "load", "max_tokens": 200, "ignore_eos": True,
            "stream": True}  # fmt: skip

    async def one() -> None:
        async with http.post(side.url + "/v1/completions", json=body) as r:
            await r.read()

    load = asyncio.gather(*(one() for _ in range(4)))
    await asyncio.sleep(1.0)
    async with http.post(
        side.url + "/v1/predict", json={"prompt_tokens": 300, "output_tokens": 50}
    ) as r:
        assert r.status == 200, await r.text()
        pred = PredictResponse.model_validate(await r.json())
    assert 0 < pred.ttft_s < pred.e2e_s < 60
    assert pred.load.num_running == 4
    await load
