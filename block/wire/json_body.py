"""Parse a request body as JSON, strictly, once, for every service that takes one.

Python's `json.loads` accepts what later breaks a server: a lone surrogate escape
(`"\\ud800"`) becomes a string no tokenizer or encoder takes (a 500 deep inside), nesting a
thousand levels deep raises `RecursionError` (not a `ValueError`), and `NaN` is not JSON. The
parser of pydantic-core refuses all three with a message, and is faster.
"""

from __future__ import annotations

from typing import Any

import pydantic_core


def parse_json_body(raw: bytes) -> Any:
    """The JSON value in `raw`; `ValueError` saying what is wrong (and where) otherwise."""
    try:
        return pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as e:
        raise ValueError(str(e)) from None
