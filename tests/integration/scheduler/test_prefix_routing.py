"""Prefix-cache-aware routing on loopback: a conversation's follow-up turns go to the replica
that holds its earlier turns, under `prefix-affinity` and under `block-ttft` at equal load."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from block.predictor.tokens import FILLER_PASSAGE

MODEL = "meta-llama/Llama-2-7b-hf"
SYSTEM = "You answer questions about the village." + FILLER_PASSAGE * 8


async def chat(http: aiohttp.ClientSession, url: str, messages: list[Any]) -> tuple[str, str]:
    """(the replica that answered, per the gateway's header, or "" direct; the reply)."""
    body = {"model": MODEL, "messages": messages, "max_tokens": 24, "ignore_eos": True}
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        reply = (await r.json())["choices"][0]["message"]["content"]
        return r.headers.get("x-gateway-destination-endpoint-served", ""), reply


@pytest.mark.parametrize("policy", ["prefix-affinity", "block-ttft"])
async def test_follow_up_turns_go_where_the_conversation_is_cached(
    cluster: Any, gateway: Any, policy: str
) -> None:
    replicas = await cluster(2)
    # A predictor that misses the deadline leaves its replica out of the choice: on a loaded
    # 2-core CI machine the default 0.25 s has been missed, and the test is about affinity.
    gw = await gateway(replicas, policy=policy, predict_deadline_s=2.0)
    url = str(gw.make_url("")).rstrip("/")
    by_name = {r.name: r for r in replicas}

    def fresh(topic: str) -> list[Any]:
        return [{"role": "user", "content": f"Tell me about the {topic}." + FILLER_PASSAGE}]

    async with aiohttp.ClientSession() as http:
        # Idle replicas, nothing cached: the tie-break's choice.
        first, _ = await chat(http, url, fresh("river"))
        # The conversation starts on the other replica (sent to it directly), so affinity is
        # told apart from the tie-break.
        holder = next(r for r in replicas if r.name != first)
        messages: list[Any] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Who keeps the ledger?"},
        ]
        _, reply = await chat(http, holder.url, messages)
        for question in ("Why does he keep it?", "What else is written there?"):
            messages += [
                {"role": "assistant", "content": reply},
                {"role": "user", "content": question},
            ]
            where, reply = await chat(http, url, messages)
            assert where == holder.name, (policy, where)
        # A conversation cached nowhere still goes by the tie-break, not to the holder.
        where, _ = await chat(http, url, fresh("bridge"))
        assert by_name[where] is by_name[first], (policy, where)
