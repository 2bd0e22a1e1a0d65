"""Read an OpenAI request body: check what the gateway relies on, summarise it for routing.

The gateway forwards the client's bytes unchanged. It validates them with the same wire models
the sidecar uses (`block.wire.openai`: the fields Block reads are checked, unknown ones pass
through to the engine), so a bad request is a clear 400 here, before any routing work, naming
the field. Prompts are never logged or kept beyond the request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from block.errors import InvalidRequest
from block.wire.json_body import parse_json_body
from block.wire.openai import ChatCompletionRequest, CompletionRequest, validation_message

Endpoint = Literal["completions", "chat"]
# Tokens a chat template adds around each message (role markers, separators): Llama-3's
# header and end-of-turn tokens are 4-5 per message.
CHAT_TOKENS_PER_MESSAGE = 5
SLO_HEADERS = ("x-block-slo-ttft-ms", "x-block-slo-e2e-ms")


@dataclass(slots=True)  # not frozen: a frozen init costs ~1 µs more per request
class Inbound:
    """What routing needs to know about one request."""

    endpoint: Endpoint
    model: str
    stream: bool
    prompt_tokens: int  # all prompts together; from characters unless token ids were sent
    length_text: str  # the text the length estimator reads ("" when there is none)
    max_tokens: int | None
    exact_output: bool  # ignore_eos with max_tokens: the length is known
    sequences: int  # prompts x n: parallel sequences the engine will run
    slo_ttft_s: float | None
    slo_e2e_s: float | None
    request: CompletionRequest | ChatCompletionRequest | None = None  # the validated body
    block_hashes: tuple[int, ...] | None = None  # the prompt's prefix-cache hash chain


def parse_json(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        body = parse_json_body(raw)
    except ValueError as e:
        raise InvalidRequest(f"the request body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise InvalidRequest(f"the request body must be a JSON object, not {_kind(body)}")
    return body


OpenAIRequest = CompletionRequest | ChatCompletionRequest


def validate(endpoint: Endpoint, body: Mapping[str, Any] | bytes) -> OpenAIRequest:
    """The body checked against the endpoint's wire model: a parsed JSON object, or the raw
    bytes (parsed and checked in one pass by pydantic-core, the lean path's way)."""
    model: type[OpenAIRequest] = ChatCompletionRequest if endpoint == "chat" else CompletionRequest
    try:
        if isinstance(body, bytes):
            return model.model_validate_json(body)
        return model.model_validate(body)
    except ValidationError as e:
        raise InvalidRequest(validation_message(e)) from e


def parse(
    endpoint: Endpoint,
    body: Mapping[str, Any] | OpenAIRequest,
    headers: Mapping[str, str],
    chars_per_token: float,
    default_slo: tuple[float | None, float | None] = (None, None),
) -> Inbound:
    """Validate `body` with the OpenAI wire models (as the sidecar will), unless it is one
    already, and summarise it."""
    if isinstance(body, CompletionRequest | ChatCompletionRequest):
        req = body
    else:
        req = validate(endpoint, body)
    if isinstance(req, ChatCompletionRequest):
        max_tokens = req.token_limit
        prompt_tokens, text, prompts = _chat(req, chars_per_token)
    else:
        max_tokens = req.max_tokens
        prompt_tokens, text, prompts = _completion(req, chars_per_token)
    slo_ttft, slo_e2e = _slos(headers, default_slo)
    return Inbound(
        endpoint=endpoint,
        model=req.model,
        stream=req.stream,
        prompt_tokens=max(1, prompt_tokens),
        length_text=text,
        max_tokens=max_tokens,
        exact_output=req.ignore_eos and max_tokens is not None,
        sequences=prompts * req.n,
        slo_ttft_s=slo_ttft,
        slo_e2e_s=slo_e2e,
        request=req,
    )


def _completion(req: CompletionRequest, cpt: float) -> tuple[int, str, int]:
    """(prompt tokens of all prompts, text for the estimator, number of prompts)."""
    prompts = req.prompts
    tokens = sum(len(p) if isinstance(p, list) else _tokens(len(p), cpt) for p in prompts)
    texts = [p for p in prompts if isinstance(p, str)]
    return tokens, max(texts, key=len) if texts else "", len(prompts)


def _chat(req: ChatCompletionRequest, cpt: float) -> tuple[int, str, int]:
    chars = 0
    last_user = ""
    for m in req.messages:
        text = m.text()
        chars += len(text)
        if m.role == "user" and text.strip():
            last_user = text
    tokens = _tokens(chars, cpt) + CHAT_TOKENS_PER_MESSAGE * len(req.messages)
    return tokens, last_user, 1


def _slos(
    headers: Mapping[str, str], default: tuple[float | None, float | None]
) -> tuple[float | None, float | None]:
    out = list(default)
    for i, name in enumerate(SLO_HEADERS):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            ms = float(raw)
        except ValueError:
            ms = math.nan
        if not math.isfinite(ms) or ms <= 0:
            raise InvalidRequest(f"header {name} must be a positive number of milliseconds")
        out[i] = ms / 1000.0
    return out[0], out[1]


def _tokens(chars: int, cpt: float) -> int:
    return max(1, math.ceil(chars / cpt))


def _kind(v: Any) -> str:
    names: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return names.get(type(v), type(v).__name__)
