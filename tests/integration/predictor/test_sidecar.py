"""`block predictor` in front of an engine twin: proxying, the live twin, predictions, errors."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest

from block.wire.predict import PredictResponse, StateResponse

MODEL = "meta-llama/Llama-2-7b-hf"
Start = Callable[..., Awaitable[Any]]
Wait = Callable[..., Awaitable[None]]


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as r:
        return await r.json(content_type=None)


async def state(http: aiohttp.ClientSession, side: Any) -> StateResponse:
    return StateResponse.model_validate(await get_json(http, side.url + "/v1/state"))


async def predict(http: aiohttp.ClientSession, side: Any, body: Any) -> PredictResponse:
    async with http.post(side.url + "/v1/predict", json=body) as r:
        assert r.status == 200, await r.text()
        return PredictResponse.model_validate(await r.json())


async def timed_stream(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[float, float, int]:
    """(TTFT, e2e, content chunks) as a client sees them."""
    start = time.monotonic()
    ttft, count = None, 0
    async with http.post(url, json=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if line.startswith(b"data: {"):
                obj = json.loads(line[6:])
                if obj["choices"] and obj["choices"][0].get("text"):
                    count += 1
                    ttft = ttft or time.monotonic() - start
    assert ttft is not None
    return ttft, time.monotonic() - start, count


async def test_streams_pass_through_and_the_twin_follows(
    start_engine: Start, start_sidecar: Start, http: aiohttp.ClientSession, wait: Wait
) -> None:
    eng = await start_engine()
    side = await start_sidecar(eng.url)
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 150, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    async with http.post(side.url + "/v1/completions", json=body) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        first = await r.content.readuntil(b"\n\n")
        assert json.loads(first[6:])["choices"][0]["text"]
        st = await state(http, side)
        assert st.inflight == 1 and st.load.num_running == 1
        rest = await r.read()
    events = [e for e in (first + rest).split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert json.loads(events[-2][6:])["usage"]["completion_tokens"] == 150
    assert sum(1 for e in events[:-2] if json.loads(e[6:])["choices"]) == 150
    st = await state(http, side)
    assert st.inflight == 0 and st.load.num_running == 0 and st.length_extensions == 0
    async with http.get(side.url + "/metrics") as r:
        text = await r.text()
    assert 'block_predictor_requests_total{outcome="completed"} 1.0' in text
    assert "block_predictor_ttft_error_seconds_count 1.0" in text
    assert "block_predictor_e2e_relative_error_ratio_count 1.0" in text


async def test_predictions_match_what_clients_then_see(
    start_engine: Start, start_sidecar: Start, http: aiohttp.ClientSession, wait: Wait
) -> None:
    """A gateway's flow: ask /v1/predict, then send the request. With other requests in
    flight, the prediction is close to the latency the client measures."""
    eng = await start_engine(num_blocks=3000)
    side = await start_sidecar(eng.url)
    url = side.url + "/v1/completions"
    background = [
        asyncio.create_task(
            timed_stream(
                http,
                url,
                dict(
                    model=MODEL,
                    prompt="word " * (200 + 100 * i),
                    max_tokens=80 + 20 * i,
                    ignore_eos=True,
                    stream=True,
                ),
                {},
            )
        )
        for i in range(6)
    ]

    async def all_running() -> bool:
        return (await state(http, side)).load.num_running == 6

    await wait(all_running, 10, "six requests running in the twin")
    prompt = "word " * 499  # 500 tokens with BOS
    pred = await predict(http, side, {"prompt_tokens": 500, "output_tokens": 120})
    assert pred.load.num_running == 6 and pred.load.kv_blocks_total == 3000
    assert pred.compute_s < 0.05
    ttft, e2e, count = await timed_stream(
        http,
        url,
        {"model": MODEL, "prompt": prompt, "max_tokens": 120, "ignore_eos": True, "stream": True},
        {"x-block-output-tokens": "120"},
    )
    await asyncio.gather(*background)
    assert count == 120
    assert e2e == pytest.approx(pred.e2e_s, rel=0.1, abs=0.08)
    assert ttft == pytest.approx(pred.ttft_s, rel=0.3, abs=0.05)


async def test_openai_client_through_the_sidecar(
    start_engine: Start, start_sidecar: Start, http: aiohttp.ClientSession
) -> None:
    eng = await start_engine()
    side = await start_sidecar(eng.url)
    client = openai.AsyncOpenAI(base_url=side.url + "/v1", api_key="k", max_retries=0)
    out = await client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=7)
    assert out.usage is not None and 1 <= out.usage.completion_tokens <= 7
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, stream=True
    )
    pieces = [c.choices[0].delta.content async for c in stream if c.choices]
    assert "".join(p or "" for p in pieces)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        await client.completions.create(model=MODEL, prompt="x", max_tokens=9000)
    assert [m.id for m in (await client.models.list()).data] == [MODEL]
    await client.close()
    st = await state(http, side)
    assert st.inflight == 0


async def test_client_disconnect_cancels_upstream(
    start_engine: Start, start_sidecar: Start, http: aiohttp.ClientSession, wait: Wait
) -> None:
    eng = await start_engine()
    side = await start_sidecar(eng.url)
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 3000, "ignore_eos": True,
            "stream": True}  # fmt: skip
    async with http.post(side.url + "/v1/completions", json=body) as r:
        await r.content.readuntil(b"\n\n")
        assert eng.twin.engine.load.num_running == 1

    async def gone() -> bool:
        return eng.twin.engine.load.num_running == 0 and not side.sidecar.twin.requests

    await wait(gone, 5, "the engine and the twin to drop the request")
    text = await (await http.get(side.url + "/metrics")).text()
    assert 'block_predictor_requests_total{outcome="cancelled"} 1.0' in text


async def test_requests_outrunning_their_estimate_get_a_conditional_length(
    start_engine: Start, start_sidecar: Start, http: aiohttp.ClientSession
) -> None:
    eng = await start_engine()
    side = await start_sidecar(eng.url, trust_ignore_eos=False, sync_interval_s=0.02)
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 250, "ignore_eos": True,
            "stream": True}  # fmt: skip
    async with http.post(
        side.url + "/v1/completions", json=body, headers={"x-block-output-tokens": "10"}
    ) as r:
        for _ in range(60):
            await r.content.readuntil(b"\n\n")
        st = await state(http, side)
        # Long past its estimate of 10, the request is still running in the twin, with a
        # remaining length drawn from ShareGPT's conditional distribution, not a constant.
        assert st.load.num_running == 1 and st.length_extensions >= 1
        tracked = next(iter(side.sidecar.twin.requests.values()))
        lengths = side.sidecar.twin.lengths
        assert tracked.output_tokens > tracked.streamed
        assert tracked.output_tokens - tracked.streamed <= lengths.remaining(10) + 60
        await r.read()
    assert (await state(http, side)).inflight == 0


async def test_drift_is_visible_when_traffic_bypasses_the_sidecar(
    start_engine: Start, start_sidecar: Start, http: aiohttp.ClientSession, wait: Wait
) -> None:
    eng = await start_engine()
    side = await start_sidecar(eng.url, reconcile_interval_s=0.05)
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 400, "ignore_eos": True}
    direct = [asyncio.create_task(http.post(eng.url + "/v1/completions", json=body))
              for _ in range(3)]  # fmt: skip

    async def drifted() -> bool:
        st = await state(http, side)
        return st.drift is not None and st.drift.num_running == 3

    await wait(drifted, 5, "drift of three running requests")
    st = await state(http, side)
    assert st.engine is not None and st.engine.num_running == 3 and st.load.num_running == 0
    text = await (await http.get(side.url + "/metrics")).text()
    assert "block_predictor_drift_running_requests 3.0" in text
    for t in direct:
        t.cancel()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{oops", "not valid JSON"),
        (b"", "empty"),
        (b"[1]", "JSON object"),
        (json.dumps({"prompt_tokens": -5, "output_tokens": 10}).encode(), "prompt_tokens"),
        (json.dumps({"prompt_tokens": 10, "output_tokens": 10**9}).encode(), "output_tokens"),
        (json.dumps({"prompt_tokens": 4000, "output_tokens": 500}).encode(), "context"),
        (json.dumps({"prompt_tokens": "many", "output_tokens": 5}).encode(), "integer"),
        (json.dumps({"candidates": []}).encode(), "at least 1"),
        (
            json.dumps({"candidates": [{"prompt_tokens": 1, "output_tokens": 1}] * 65}).encode(),
            "at most 64",
        ),
        (json.dumps({"prompt_tokens": 1, "output_tokens": 1, "colour": "red"}).encode(), "colour"),
    ],
)
async def test_bad_predict_input_is_a_clear_4xx(
    start_engine: Start,
    start_sidecar: Start,
    http: aiohttp.ClientSession,
    body: bytes,
    needle: str,
) -> None:
    side = await start_sidecar("http://127.0.0.1:9")  # no engine needed to predict
    async with http.post(side.url + "/v1/predict", data=body) as r:
        problem = await r.json(content_type=None)
        assert r.status == 400, problem
        assert r.content_type == "application/problem+json"
    assert needle in problem["detail"]


async def test_bad_proxied_input_and_oversized_bodies(
    start_engine: Start, start_sidecar: Start, http: aiohttp.ClientSession
) -> None:
    eng = await start_engine()
    side = await start_sidecar(eng.url, max_body_bytes=2048)
    url = side.url + "/v1/chat/completions"
    async with http.post(url, json={"model": MODEL, "messages": "hi"}) as r:
        assert r.status == 400 and "messages" in (await r.json(content_type=None))["detail"]
    ok = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(url, json=ok, headers={"x-block-output-tokens": "-3"}) as r:
        assert r.status == 400 and "x-block-output-tokens" in (await r.text())
    big = {"model": MODEL, "messages": [{"role": "user", "content": "y" * 5000}]}
    async with http.post(url, json=big) as r:
        assert r.status == 413 and "2048 bytes" in (await r.text())
    async with http.post(side.url + "/v1/predict", data=b"1" * 5000) as r:
        assert r.status == 413
    assert eng.twin.engine.load.num_running == 0


async def test_engine_down_is_a_clear_503_and_not_ready(
    start_sidecar: Start, http: aiohttp.ClientSession
) -> None:
    side = await start_sidecar("http://127.0.0.1:9")
    async with http.get(side.url + "/readyz") as r:
        assert r.status == 503 and "not answering" in (await r.text())
    async with http.get(side.url + "/healthz") as r:
        assert r.status == 200
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 5}
    async with http.post(side.url + "/v1/completions", json=body) as r:
        problem = await r.json(content_type=None)
        assert r.status == 503 and "not reachable" in problem["detail"]
    st = await state(http, side)
    assert st.engine_up is False and st.engine_error and st.inflight == 0
    # The twin still answers predictions (from its own state) and says how old it is.
    pred = await predict(http, side, {"prompt_tokens": 10, "output_tokens": 10})
    assert pred.state_age_s > 1e6


async def test_long_prompts_are_counted_beside_the_request(
    start_engine: Start, start_sidecar: Start, http: aiohttp.ClientSession, resources: Any
) -> None:
    """A long prompt is tokenized while the request is already on its way; the twin still
    gets its exact size and the time it was sent."""
    eng = await start_engine()
    side = await start_sidecar(eng.url)
    prompt = "The quick brown fox jumps over the lazy dog. " * 300  # ~13k characters
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 50, "ignore_eos": True,
            "stream": True}  # fmt: skip
    async with http.post(side.url + "/v1/completions", json=body) as r:
        await r.content.readuntil(b"\n\n")
        (tracked,) = side.sidecar.twin.requests.values()
        assert tracked.prompt_tokens == 1 + resources.tokens.count_text(prompt)
        assert tracked.first_token_s is not None and tracked.arrival_s < tracked.first_token_s
        await r.read()
    assert not side.sidecar.twin.requests


async def test_engine_settings_are_one_source_of_truth(
    start_engine: Start, start_sidecar: Start, http: aiohttp.ClientSession, wait: Wait
) -> None:
    # The engine runs blocks of 32 without prefix caching; the sidecar was told 16 and caching.
    eng = await start_engine(block_size=32, enable_prefix_caching=False, max_num_seqs=8)
    side = await start_sidecar(eng.url, block_size=16, max_num_seqs=4)
    cfg = side.sidecar.twin.replica.config
    assert cfg.block_size == 32 and cfg.enable_prefix_caching is False  # follows the engine
    async with http.get(side.url + "/metrics") as r:
        text = await r.text()
    assert 'block_predictor_engine_config_mismatch{setting="block_size"} 1.0' in text
    assert 'block_predictor_engine_config_mismatch{setting="num_blocks"} 0.0' in text
    assert 'block_predictor_engine_config_mismatch{setting="enable_prefix_caching"} 0.0' in text
    # vLLM does not report max_num_seqs: running more than the sidecar allows gives it away.
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 400, "ignore_eos": True, "stream": True}

    async def one() -> None:
        async with http.post(side.url + "/v1/completions", json=body) as r:
            await r.read()

    tasks = [asyncio.create_task(one()) for _ in range(6)]

    async def flagged() -> bool:
        async with http.get(side.url + "/metrics") as r:
            return 'mismatch{setting="max_num_seqs"} 1.0' in await r.text()

    await wait(flagged, 10, "the max_num_seqs mismatch")
    for t in tasks:
        t.cancel()
