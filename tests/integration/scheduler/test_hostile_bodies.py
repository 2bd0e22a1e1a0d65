"""Bodies that used to break a service (a 500 or a traceback) are a 400 everywhere: the gateway
(Envoy + the picker), the sidecar's OpenAI and predict endpoints, and the engine twin."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

MODEL = "meta-llama/Llama-2-7b-hf"
LONE_SURROGATE = b'{"model": "%s", "prompt": "\\ud800", "max_tokens": 2}' % MODEL.encode()
DEEP = b'{"model": "%s", "prompt": %s}' % (MODEL.encode(), b"[" * 1000 + b"]" * 1000)
NOT_A_NUMBER = b'{"model": "%s", "prompt": "hi", "temperature": NaN}' % MODEL.encode()
PREDICT_DEEP = b'{"prompt_tokens": 10, "output_tokens": 5, "x": %s}' % (b"[" * 1000 + b"]" * 1000)


@pytest.mark.parametrize(
    "raw", [LONE_SURROGATE, DEEP, NOT_A_NUMBER], ids=["surrogate", "deep", "nan"]
)
async def test_bad_json_is_a_400_on_every_service(cluster: Any, gateway: Any, raw: bytes) -> None:
    (replica,) = await cluster(1)
    gw = await gateway([replica], policy="block")
    targets = {
        "gateway": str(gw.make_url("/v1/completions")),
        "sidecar": replica.url + "/v1/completions",
        "engine": replica.engine.url + "/v1/completions",
    }
    async with aiohttp.ClientSession() as s:
        for name, url in targets.items():
            async with s.post(url, data=raw, headers={"Content-Type": "application/json"}) as r:
                body = await r.json(content_type=None)
                assert r.status == 400, (name, body)
                assert "not valid JSON" in body["detail"], (name, body)
        async with s.post(replica.url + "/v1/predict", data=PREDICT_DEEP) as r:
            assert r.status == 400
        # Nothing is left in flight, and the services still serve.
        ok = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
        async with s.post(targets["gateway"], json=ok) as r:
            assert r.status == 200


async def test_a_prompt_that_cannot_fit_is_refused_before_tokenizing(cluster: Any) -> None:
    (replica,) = await cluster(1)
    # 4,096 tokens of context x 128 characters (the longest Llama-3 token), and one more.
    huge = "x" * (4096 * 128 + 1)
    async with aiohttp.ClientSession() as s:
        for path, payload in [
            ("/v1/completions", {"model": MODEL, "prompt": huge, "max_tokens": 2}),
            ("/v1/chat/completions", {"model": MODEL, "max_tokens": 2,
                                      "messages": [{"role": "user", "content": huge}]}),
        ]:  # fmt: skip
            async with s.post(replica.url + path, json=payload) as r:
                body = await r.json(content_type=None)
                assert r.status == 400 and "characters" in body["detail"], body
        async with s.get(replica.engine.url + "/metrics") as r:
            assert "vllm:num_requests_running" in await r.text()
        async with s.get(replica.url + "/metrics") as r:
            text = await r.text()
    # The engine never saw them: the sidecar proxied nothing.
    assert 'block_predictor_requests_total{outcome="completed"}' not in text
