"""The sidecar's side reading of SSE streams: tokens, usage and [DONE], whatever the chunking."""

from __future__ import annotations

import json

from block.predictor.proxying import _EventCounter


def events() -> bytes:
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        *({"choices": [{"index": 0, "delta": {"content": f" w{i}"}}]} for i in range(5)),
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"id": "x"}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 6}},
    ]
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return body + b": keep-alive comment\n\n" + b"data: [DONE]\n\n"


def test_counts_content_chunks_across_any_split() -> None:
    data = events()
    for size in (1, 7, 64, len(data)):
        counter = _EventCounter()
        seen = sum(counter.feed(data[i : i + size]) for i in range(0, len(data), size))
        assert seen == counter.tokens == 6  # five content deltas and one tool call
        assert counter.usage_tokens == 6 and counter.done


def test_completions_text_and_garbage() -> None:
    counter = _EventCounter()
    text = b'data: {"choices":[{"index":0,"text":" a"}]}\n\ndata: {"choices":[{"text":""}]}\n\n'
    assert counter.feed(text + b"data: not json\n\ndata: [1, 2]\n\n") == 1
    assert not counter.done and counter.usage_tokens is None
