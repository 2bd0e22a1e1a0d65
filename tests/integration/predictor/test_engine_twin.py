"""`block engine`: OpenAI API behaviour, real token counts, simulator timing, vLLM metrics."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest

from block.simulator.prefix_cache import chain_hashes
from block.simulator.replica import Replica, ReplicaConfig
from block.simulator.requests import Request
from block.wire.openai import ChatCompletionChunk, CompletionResponse

MODEL = "meta-llama/Llama-2-7b-hf"
StartEngine = Callable[..., Awaitable[Any]]
Wait = Callable[..., Awaitable[None]]
PROMPT = "Summarise the history of the printing press in three short paragraphs, please."


async def stream_times(
    http: aiohttp.ClientSession, url: str, body: dict[str, object]
) -> tuple[float, float, list[dict[str, object]]]:
    """(TTFT, e2e, chunks) of one streamed request, as the client sees them."""
    start = time.monotonic()
    ttft = None
    chunks = []
    async with http.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        buf = b""
        async for data in r.content.iter_any():
            buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                payload = event.removeprefix(b"data: ")
                if payload == b"[DONE]":
                    continue
                obj = json.loads(payload)
                if ttft is None and obj["choices"]:
                    c = obj["choices"][0]
                    if c.get("text") or (c.get("delta") or {}).get("content"):
                        ttft = time.monotonic() - start
                chunks.append(obj)
    assert ttft is not None
    return ttft, time.monotonic() - start, chunks


async def test_usage_counts_real_tokens(
    start_engine: StartEngine, http: aiohttp.ClientSession, resources: Any
) -> None:
    eng = await start_engine()
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 12, "ignore_eos": True}
    async with http.post(eng.url + "/v1/completions", json=body) as r:
        assert r.status == 200
        resp = CompletionResponse.model_validate(await r.json())
    assert resp.usage is not None
    expected_prompt = 1 + resources.tokens.count_text(PROMPT)  # BOS + the prompt
    assert resp.usage.prompt_tokens == expected_prompt
    assert resp.usage.completion_tokens == 12
    assert resp.usage.total_tokens == expected_prompt + 12
    assert resp.choices[0].finish_reason == "length"
    # The filler text is made of real tokens: it re-tokenizes to about what was claimed.
    assert abs(resources.tokens.count_text(resp.choices[0].text) - 12) <= 2


async def test_client_sees_the_simulated_timing(
    start_engine: StartEngine, http: aiohttp.ClientSession, resources: Any
) -> None:
    """Eight overlapping requests: each client's TTFT and e2e match an offline simulation of
    the same requests, arriving at the same offsets, on the same replica model."""
    eng = await start_engine(num_blocks=4000)
    sizes = [(40 + 150 * i, 30 + 10 * i) for i in range(8)]
    prompts = [" ".join(["word"] * (p - 1)) for p, _ in sizes]  # "word" is one token
    t0 = time.monotonic()
    sent: list[float] = []

    async def one(i: int) -> tuple[float, float, list[dict[str, object]]]:
        await asyncio.sleep(0.04 * i)  # a fixed arrival order, overlapping in the engine
        sent.append(time.monotonic() - t0)
        body = dict(model=MODEL, prompt=prompts[i], max_tokens=sizes[i][1], ignore_eos=True,
                    stream=True)  # fmt: skip
        return await stream_times(http, eng.url + "/v1/completions", body)

    results = await asyncio.gather(*(one(i) for i in range(8)))
    sim = Replica(resources.latency, ReplicaConfig(num_blocks=4000, max_run_steps=1))
    tok = resources.tokens
    for i, text in enumerate(prompts):
        # The engine caches prefixes as vLLM does: these prompts share theirs.
        ids = tok.bos_ids + tok.encode(text)
        hashes = tuple(chain_hashes(ids + tok.ids(0, sizes[i][1]), 16))
        sim.submit(Request(i, sent[i], len(ids), sizes[i][1], hashes), sent[i])
    sim.run_until_idle()
    for i, (ttft, e2e, chunks) in enumerate(results):
        assert sum(1 for c in chunks if c["choices"]) == sizes[i][1]
        want_ttft = sim.recorder.first_token[i] - sent[i]
        want_e2e = sim.recorder.finished[i] - sent[i]
        # Loopback, the event loop and arrival jitter add a few ms; a shared CI box more.
        assert ttft == pytest.approx(want_ttft, rel=0.25, abs=0.05), (i, ttft, want_ttft)
        assert e2e == pytest.approx(want_e2e, rel=0.1, abs=0.08), (i, e2e, want_e2e)


async def test_openai_client_streams_chat_with_usage(start_engine: StartEngine) -> None:
    eng = await start_engine()
    client = openai.AsyncOpenAI(base_url=eng.url + "/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me about rivers."}],
        max_tokens=9,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, reasons = "", None, []
    async for chunk in stream:
        ChatCompletionChunk.model_validate(chunk.model_dump())
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.finish_reason:
                reasons.append(c.finish_reason)
        if chunk.usage:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens == 9
    assert reasons == ["length"] and text
    full = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert full.usage is not None and full.usage.completion_tokens == 3
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    await client.close()


async def test_lengths_are_drawn_and_seeded(
    start_engine: StartEngine, http: aiohttp.ClientSession
) -> None:
    async def one(eng: Any) -> int:
        body = {"model": MODEL, "prompt": "Hi", "max_tokens": 120}
        async with http.post(eng.url + "/v1/completions", json=body) as r:
            obj = await r.json()
        n: int = obj["usage"]["completion_tokens"]
        assert obj["choices"][0]["finish_reason"] == ("length" if n == 120 else "stop")
        return n

    async def lengths(eng: Any) -> list[int]:
        # Concurrent requests draw in arrival order, which varies: compare the multisets.
        return sorted(await asyncio.gather(*(one(eng) for _ in range(16))))

    a = await lengths(await start_engine(seed=3))
    b = await lengths(await start_engine(seed=3))
    assert a == b, "the same seed draws the same lengths"
    assert len(set(a)) > 2 and min(a) < 120, "lengths come from a distribution, capped by 120"


async def test_vllm_metrics_follow_the_load(
    start_engine: StartEngine, http: aiohttp.ClientSession, wait: Wait
) -> None:
    eng = await start_engine()

    async def metric(name: str) -> float:
        async with http.get(eng.url + "/metrics") as r:
            text = await r.text()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 300, "ignore_eos": True}
    tasks = [asyncio.create_task(http.post(eng.url + "/v1/completions", json=body))]

    async def running() -> bool:
        return await metric("vllm:num_requests_running") == 1

    await wait(running, 5, "one running request")
    assert 0 < await metric("vllm:kv_cache_usage_perc") < 1
    responses = await asyncio.gather(*tasks)
    for r in responses:
        r.release()
    assert await metric("vllm:num_requests_running") == 0
    assert await metric("vllm:generation_tokens_total") == 300
    assert await metric("vllm:prompt_tokens_total") == 2
    assert await metric("vllm:time_to_first_token_seconds_count") == 1
    assert await metric("vllm:e2e_request_latency_seconds_count") == 1
    assert await metric("vllm:request_success_total") == 1
    async with http.get(eng.url + "/metrics") as r:
        assert 'vllm:cache_config_info{block_size="16"' in await r.text()


async def test_client_disconnect_aborts_the_request(
    start_engine: StartEngine, http: aiohttp.ClientSession, wait: Wait
) -> None:
    eng = await start_engine()
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2000, "ignore_eos": True,
            "stream": True}  # fmt: skip
    async with http.post(eng.url + "/v1/completions", json=body) as r:
        await r.content.readuntil(b"\n\n")
        await r.content.readuntil(b"\n\n")
        assert eng.twin.engine.load.num_running == 1
    # Leaving the block closed the connection mid-stream.

    async def dropped() -> bool:
        return eng.twin.engine.load.num_running == 0

    await wait(dropped, 5, "the engine to drop the request")
    assert eng.twin.engine.replica.used_blocks == 0
    # A queued, non-streamed request whose client gives up is dropped too (handler cancelled).
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2000, "ignore_eos": True}
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(http.post(eng.url + "/v1/completions", json=body), 0.3)
    await wait(dropped, 5, "the engine to drop the non-streamed request")


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": MODEL}, 400, "prompt: Field required"),
        ({"model": "gpt-4", "prompt": "x"}, 404, "does not exist"),
        ({"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": MODEL, "prompt": "x", "max_tokens": 5000}, 400, "maximum context length"),
        ({"model": MODEL, "prompt": "x", "n": 2}, 400, "one choice"),
        ({"model": MODEL, "prompt": ["a", "b"]}, 400, "one prompt"),
        ({"model": MODEL, "prompt": "x", "temperature": 7}, 400, "temperature"),
        ([1, 2], 400, "JSON object"),
    ],
)
async def test_bad_input_is_a_clear_4xx(
    start_engine: StartEngine,
    http: aiohttp.ClientSession,
    body: object,
    status: int,
    needle: str,
) -> None:
    eng = await start_engine()
    async with http.post(eng.url + "/v1/completions", json=body) as r:
        assert r.status == status
        assert r.content_type == "application/problem+json"
        problem = await r.json(content_type=None)
    assert needle in problem["detail"] and problem["status"] == status
    assert problem["error"]["message"] == problem["detail"]


async def test_malformed_and_oversized_bodies(
    start_engine: StartEngine, http: aiohttp.ClientSession
) -> None:
    eng = await start_engine(max_body_bytes=4096)
    async with http.post(eng.url + "/v1/chat/completions", data=b"{not json") as r:
        assert r.status == 400 and "not valid JSON" in (await r.json(content_type=None))["detail"]
    big = {"model": MODEL, "prompt": "x" * 10_000}
    async with http.post(eng.url + "/v1/completions", json=big) as r:
        assert r.status == 413 and "4096 bytes" in (await r.json(content_type=None))["detail"]
    async with http.get(eng.url + "/v1/nothing") as r:
        assert r.status == 404 and r.content_type == "application/problem+json"
