"""Read an OpenAI request body: check what the gateway relies on, summarise it for routing.

The gateway forwards the client's bytes unchanged, so it checks only the fields it reads
(model, prompt or messages, max_tokens, n, stream) and leaves the rest to the engine, which
knows its own extensions. Every failure is an `InvalidRequest` naming the field. Prompts are
never logged or kept beyond the request.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from block.errors import InvalidRequest

Endpoint = Literal["completions", "chat"]
MAX_N = 128
# Tokens a chat template adds around each message (role markers, separators): Llama-3's
# header and end-of-turn tokens are 4-5 per message.
CHAT_TOKENS_PER_MESSAGE = 5
SLO_HEADERS = ("x-block-slo-ttft-ms", "x-block-slo-e2e-ms")


@dataclass(frozen=True, slots=True)
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


def parse_json(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidRequest(f"the request body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise InvalidRequest(f"the request body must be a JSON object, not {_kind(body)}")
    return body


def parse(
    endpoint: Endpoint,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    chars_per_token: float,
    default_slo: tuple[float | None, float | None] = (None, None),
) -> Inbound:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be true or false")
    n = _optional_int(body, "n", 1, MAX_N) or 1
    max_tokens = _optional_int(body, "max_tokens", 1, None)
    if endpoint == "chat":
        max_tokens = _optional_int(body, "max_completion_tokens", 1, None) or max_tokens
        prompt_tokens, text, prompts = _chat(body, chars_per_token)
    else:
        prompt_tokens, text, prompts = _completion(body, chars_per_token)
        if "max_tokens" not in body:
            max_tokens = 16  # the OpenAI completions default
    ignore_eos = body.get("ignore_eos", False) is True
    slo_ttft, slo_e2e = _slos(headers, default_slo)
    return Inbound(
        endpoint=endpoint,
        model=model,
        stream=stream,
        prompt_tokens=max(1, prompt_tokens),
        length_text=text,
        max_tokens=max_tokens,
        exact_output=ignore_eos and max_tokens is not None,
        sequences=prompts * n,
        slo_ttft_s=slo_ttft,
        slo_e2e_s=slo_e2e,
    )


def _completion(body: Mapping[str, Any], cpt: float) -> tuple[int, str, int]:
    """(prompt tokens of all prompts, text for the estimator, number of prompts)."""
    if "prompt" not in body:
        raise InvalidRequest("'prompt' is required for /v1/completions")
    prompt = body["prompt"]
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidRequest("'prompt' must not be empty")
        return _tokens(len(prompt), cpt), prompt, 1
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            longest = max(prompt, key=len)
            if not longest:
                raise InvalidRequest("'prompt' strings must not all be empty")
            return sum(_tokens(len(p), cpt) for p in prompt), longest, len(prompt)
        if all(_is_token(t) for t in prompt):
            return len(prompt), "", 1
        if all(isinstance(p, list) and p and all(_is_token(t) for t in p) for p in prompt):
            return sum(len(p) for p in prompt), "", len(prompt)
    raise InvalidRequest(
        "'prompt' must be a non-empty string, a list of strings, a list of token ids or a "
        "list of lists of token ids"
    )


def _chat(body: Mapping[str, Any], cpt: float) -> tuple[int, str, int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' is required and must be a non-empty list")
    chars = 0
    last_user = ""
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidRequest(f"messages[{i}] must be an object, not {_kind(m)}")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise InvalidRequest(f"messages[{i}].role is required and must be a string")
        text = _content_text(m.get("content"), i)
        chars += len(text)
        if role == "user" and text.strip():
            last_user = text
    tokens = _tokens(chars, cpt) + CHAT_TOKENS_PER_MESSAGE * len(messages)
    return tokens, last_user, 1


def _content_text(content: Any, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequest(f"messages[{i}].content[{j}] must be an object with a type")
            text = part.get("text")
            if part["type"] == "text" and not isinstance(text, str):
                raise InvalidRequest(f"messages[{i}].content[{j}].text must be a string")
            if isinstance(text, str):
                parts.append(text)
        return "\n".join(parts)
    raise InvalidRequest(f"messages[{i}].content must be a string or a list of parts")


def _optional_int(body: Mapping[str, Any], key: str, low: int, high: int | None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < low or (high and v > high):
        bound = f"between {low} and {high}" if high else f"at least {low}"
        raise InvalidRequest(f"'{key}' must be an integer {bound}, got {v!r}")
    return v


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


def _is_token(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and t >= 0


def _kind(v: Any) -> str:
    names: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return names.get(type(v), type(v).__name__)
