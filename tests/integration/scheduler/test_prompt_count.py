"""The gateway tells predictors the prompt's exact token count when it sends block hashes.

A prompt of digits and punctuation has far more tokens than its characters / 4, so a count
from characters would be smaller than the hash chain covers, and every predictor would refuse
the question (HTTP 400): every decision a fallback. With the count from the same ids, every
predictor answers and the policy itself decides.
"""

from __future__ import annotations

from typing import Any

import aiohttp

MODEL = "meta-llama/Llama-2-7b-hf"
# About 1.3 characters per Llama-3 token: characters / 4 undercounts it threefold.
DENSE_PROMPT = ",".join(str(i % 10) for i in range(600))


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Summed samples by metric name (labels ignored)."""
    out: dict[str, float] = {}
    async with http.get(url + "/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("#") or not line.strip():
                continue
            head, _, value = line.rpartition(" ")
            name = head.split("{")[0]
            out[name] = out.get(name, 0.0) + float(value)
    return out


async def test_dense_prompt_is_predicted_not_refused(cluster: Any, gateway: Any) -> None:
    replicas = await cluster(2)
    gw = await gateway(replicas, policy="block")
    url = str(gw.make_url("")).rstrip("/")
    body = {"model": MODEL, "prompt": DENSE_PROMPT, "max_tokens": 8, "ignore_eos": True}
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(url + "/v1/completions", json=body) as r:
                assert r.status == 200, await r.text()
                await r.read()
        m = await scrape(http, url)
    assert m.get("block_scheduler_predictor_errors_total", 0.0) == 0.0, m
    assert m.get("block_scheduler_fallbacks_total", 0.0) == 0.0, m
    assert m.get("block_scheduler_decisions_total", 0.0) == 3.0, m
