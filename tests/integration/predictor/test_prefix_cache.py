"""The sidecar's twin follows the engine's prefix cache: prompts it proxied (and their answers)
make a later prompt that repeats them predict a shorter TTFT, with its cached tokens."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from block.predictor.tokens import FILLER_PASSAGE
from block.simulator.prefix_cache import chain_hashes
from block.wire.openai import ChatMessage
from block.wire.predict import PredictResponse

MODEL = "meta-llama/Llama-2-7b-hf"
Start = Callable[..., Awaitable[Any]]
Wait = Callable[..., Awaitable[None]]
SYSTEM = "You answer questions about the village." + FILLER_PASSAGE * 12


async def ask(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> PredictResponse:
    async with http.post(url + "/v1/predict", json=body) as r:
        assert r.status == 200, await r.text()
        return PredictResponse.model_validate(await r.json())


async def test_a_follow_up_turn_predicts_its_cache_hit(
    start_engine: Start,
    start_sidecar: Start,
    http: aiohttp.ClientSession,
    wait: Wait,
    resources: Any,
) -> None:
    eng = await start_engine()
    side = await start_sidecar(eng.url)
    tokens = resources.tokens
    first = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Who keeps the ledger?"},
    ]
    body = {"model": MODEL, "messages": first, "max_tokens": 40, "ignore_eos": True}
    async with http.post(side.url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        reply = (await r.json())["choices"][0]["message"]["content"]
    first_ids = await tokens.chat_prompt_ids([ChatMessage.model_validate(m) for m in first])

    follow = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "Why?"}]
    ids = await tokens.chat_prompt_ids([ChatMessage.model_validate(m) for m in follow])
    hashes = chain_hashes(ids, 16)
    # The same length without shared content: another conversation's prompt.
    other = chain_hashes([i + 1 for i in ids], 16)
    cand = {"prompt_tokens": len(ids), "output_tokens": 50}
    answers: list[PredictResponse] = []

    async def answer_cached() -> bool:
        # The answer's blocks join the twin once its text is tokenized (off the request path).
        p = await ask(
            http, side.url, {"candidates": [{**cand, "block_hashes": hashes},
                                            {**cand, "block_hashes": other}, cand]},
        )  # fmt: skip
        answers.append(p)
        return p.predictions[0].prefix_hit_tokens > len(first_ids)

    await wait(answer_cached, 5, "the first turn's answer cached in the twin")
    hit, miss, plain = answers[-1].predictions
    # Everything but the new question (and the block it ends in) is cached.
    assert len(ids) - 48 <= hit.prefix_hit_tokens < len(ids)
    assert miss.prefix_hit_tokens == 0 and plain.prefix_hit_tokens == 0
    assert hit.ttft_s < 0.5 * miss.ttft_s
    assert miss.ttft_s == plain.ttft_s  # no hit: the same prediction as without hashes
    assert answers[-1].ttft_s == hit.ttft_s  # the top level repeats the first candidate


async def test_bad_block_hashes_are_a_clear_4xx(
    start_engine: Start, start_sidecar: Start, http: aiohttp.ClientSession
) -> None:
    eng = await start_engine()
    side = await start_sidecar(eng.url)
    bad: list[tuple[Any, str]] = [
        ([-1], "block_hashes"),
        ([1 << 62], "block_hashes"),
        (["abc"], "block_hashes"),
        ("0102", "block_hashes"),
        (list(range(7)), "7 block hashes cover 112 tokens"),  # a 100-token prompt has 6 blocks
    ]
    for hashes, says in bad:
        body = {"prompt_tokens": 100, "output_tokens": 10, "block_hashes": hashes}
        async with http.post(side.url + "/v1/predict", json=body) as r:
            assert 400 <= r.status < 500, (hashes, r.status)
            assert r.content_type == "application/problem+json"
            assert says in (await r.json())["detail"], hashes
    ok = {"prompt_tokens": 100, "output_tokens": 10, "block_hashes": list(range(6))}
    assert (await ask(http, side.url, ok)).predictions[0].prefix_hit_tokens == 0
