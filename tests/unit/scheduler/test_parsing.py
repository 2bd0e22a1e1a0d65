"""Reading OpenAI bodies: what routing learns from them, and clear errors for bad ones."""

from __future__ import annotations

import pytest

from block.errors import InvalidRequest
from block.scheduler import parsing


def parse(endpoint: str, body: dict, headers: dict | None = None, **kw: object) -> parsing.Inbound:
    return parsing.parse(endpoint, body, headers or {}, 4.0, **kw)  # type: ignore[arg-type]


def test_completion_summary() -> None:
    got = parse("completions", {"model": "m", "prompt": "x" * 41, "max_tokens": 9, "n": 2})
    assert (got.model, got.stream, got.prompt_tokens, got.max_tokens) == ("m", False, 11, 9)
    assert got.sequences == 2 and got.length_text == "x" * 41 and not got.exact_output


def test_the_sidecars_wire_models_decide_what_is_valid() -> None:
    # The same strict models the sidecar applies: unknown fields pass through to the engine,
    # the fields Block reads take their JSON type only (as OpenAI and vLLM answer).
    got = parse("completions", {"model": "m", "prompt": "hi", "stream": True, "extra": 1})
    assert got.stream
    for field, value in [("stream", "true"), ("max_tokens", "5"), ("max_tokens", True),
                         ("n", 1.5), ("ignore_eos", 1)]:  # fmt: skip
        with pytest.raises(InvalidRequest, match=field):
            parse("completions", {"model": "m", "prompt": "hi", field: value})
    with pytest.raises(InvalidRequest, match="min_tokens"):
        parse("completions", {"model": "m", "prompt": "hi", "max_tokens": 4, "min_tokens": 9})
    with pytest.raises(InvalidRequest, match="min_tokens"):
        parse("chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                       "max_completion_tokens": 4, "min_tokens": 9})  # fmt: skip


def test_completion_max_tokens_defaults_to_16_like_openai() -> None:
    assert parse("completions", {"model": "m", "prompt": "hi"}).max_tokens == 16


def test_token_id_prompts_are_counted_exactly() -> None:
    got = parse("completions", {"model": "m", "prompt": [1, 2, 3, 4, 5]})
    assert got.prompt_tokens == 5 and got.length_text == "" and got.sequences == 1
    got = parse("completions", {"model": "m", "prompt": [[1, 2], [3, 4, 5]]})
    assert got.prompt_tokens == 5 and got.sequences == 2


def test_batched_string_prompts() -> None:
    got = parse("completions", {"model": "m", "prompt": ["abcd", "abcdefgh"], "stream": True})
    assert got.prompt_tokens == 3 and got.sequences == 2 and got.stream
    assert got.length_text == "abcdefgh"


def test_chat_reads_parts_and_the_last_user_turn() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": None, "tool_calls": []},
            {
                "role": "user",
                "content": [{"type": "text", "text": "second"}, {"type": "image_url"}],
            },
        ],
        "max_completion_tokens": 77,
        "max_tokens": 5,
    }
    got = parse("chat", body)
    assert got.length_text == "second"
    assert got.max_tokens == 77
    chars = len("Be brief.") + len("first question") + len("second")
    assert got.prompt_tokens == -(-chars // 4) + 4 * parsing.CHAT_TOKENS_PER_MESSAGE
    assert (
        parse("chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}).max_tokens
        is None
    )


def test_ignore_eos_with_max_tokens_is_exact() -> None:
    body = {"model": "m", "prompt": "hi", "max_tokens": 100, "ignore_eos": True}
    assert parse("completions", body).exact_output


def test_slo_headers_override_cluster_defaults() -> None:
    body = {"model": "m", "prompt": "hi"}
    got = parse("completions", body, default_slo=(1.0, 10.0))
    assert (got.slo_ttft_s, got.slo_e2e_s) == (1.0, 10.0)
    got = parse("completions", body, {"x-block-slo-ttft-ms": "250"}, default_slo=(1.0, 10.0))
    assert (got.slo_ttft_s, got.slo_e2e_s) == (0.25, 10.0)
    for bad in ("0", "-5", "nan", "inf", "soon"):
        with pytest.raises(InvalidRequest, match="x-block-slo-e2e-ms"):
            parse("completions", body, {"x-block-slo-e2e-ms": bad})


@pytest.mark.parametrize(
    ("endpoint", "body", "needle"),
    [
        ("completions", {"model": "", "prompt": "hi"}, "model: String should have at least 1"),
        ("completions", {"model": 3, "prompt": "hi"}, "model: Input should be a valid string"),
        ("completions", {"model": "m"}, "prompt: Field required"),
        ("completions", {"model": "m", "prompt": []}, "prompt must not be empty"),
        ("completions", {"model": "m", "prompt": [-1]}, "greater than or equal to 0"),
        ("completions", {"model": "m", "prompt": [1, "a"]}, "prompt.1"),
        ("completions", {"model": "m", "prompt": "hi", "n": 0}, "n: Input should be greater"),
        ("completions", {"model": "m", "prompt": "hi", "n": 1000}, "less than or equal to 128"),
        ("completions", {"model": "m", "prompt": "hi", "max_tokens": 0}, "max_tokens: Input"),
        ("completions", {"model": "m", "prompt": "hi", "max_tokens": 1.5}, "max_tokens: Input"),
        ("completions", {"model": "m", "prompt": "hi", "stream": "maybe"}, "stream: Input"),
        ("chat", {"model": "m"}, "messages: Field required"),
        ("chat", {"model": "m", "messages": []}, "messages: List should have at least 1"),
        ("chat", {"model": "m", "messages": ["hi"]}, "messages.0: Input should be a valid"),
        ("chat", {"model": "m", "messages": [{"content": "hi"}]}, "messages.0.role: Field"),
        ("chat", {"model": "m", "messages": [{"role": "boss", "content": "hi"}]}, "role"),
        ("chat", {"model": "m", "messages": [{"role": "user", "content": 5}]}, "content"),
        (
            "chat",
            {"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]},
            "messages.0.content.0.type: Field required",
        ),
    ],
)
def test_bad_bodies(endpoint: str, body: dict, needle: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(endpoint, body)
    assert needle in err.value.detail


def test_parse_json_rejects_non_objects() -> None:
    assert parsing.parse_json(b'{"a": 1}') == {"a": 1}
    for raw, needle in [(b"", "empty"), (b"\xff", "not valid JSON"), (b"3", "object, not int")]:
        with pytest.raises(InvalidRequest) as err:
            parsing.parse_json(raw)
        assert needle in err.value.detail
