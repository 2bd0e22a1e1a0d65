"""Any JSON body is either understood or refused with InvalidRequest (a 400): never another
exception (a 500). Hypothesis builds bodies around the fields the wire models read."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from block.errors import InvalidRequest
from block.predictor import problems
from block.scheduler import parsing
from block.wire.predict import PredictRequest

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "stream", "n",
    "ignore_eos", "min_tokens", "temperature", "role", "content", "prompt_tokens",
    "output_tokens", "block_hashes", "candidates", "impact",
]  # fmt: skip
BODIES = st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=6)
MESSAGES = st.lists(
    st.dictionaries(st.sampled_from(["role", "content", "name"]), VALUES), max_size=3
)


def _refused_or_read(fn: Any) -> None:
    try:
        fn()
    except InvalidRequest as e:
        assert e.status == 400 and e.detail


@settings(max_examples=300, deadline=None)
@given(body=BODIES, messages=MESSAGES, endpoint=st.sampled_from(["completions", "chat"]))
def test_the_pickers_parsing_refuses_cleanly(
    body: dict[str, Any], messages: list[dict[str, Any]], endpoint: str
) -> None:
    if endpoint == "chat":
        body = {"model": "m", "messages": messages, **body}
    raw = json.dumps(body).encode()
    _refused_or_read(
        lambda: parsing.parse(endpoint, parsing.parse_json(raw), {}, 4.0)  # type: ignore[arg-type]
    )


@settings(max_examples=300, deadline=None)
@given(body=BODIES)
def test_the_predict_body_refuses_cleanly(body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    _refused_or_read(lambda: problems.validate(PredictRequest, problems.parse_json(raw)))


@given(raw=st.binary(max_size=64))
def test_any_bytes_are_json_or_a_400(raw: bytes) -> None:
    _refused_or_read(lambda: parsing.parse_json(raw))
    _refused_or_read(lambda: problems.parse_json(raw))
