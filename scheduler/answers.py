"""Whole answers, independent of the server that writes them, and errors as problem+json.

The picker's immediate responses (through Envoy) and its admin app write the same `Answer`s
and map failures to the same RFC 9457 bodies here, with an OpenAI-style `error` member so
OpenAI clients show the message. `envoy_config` words Envoy's own error answers alike.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from aiohttp import web

from block.errors import BlockError, Overloaded, Unauthorized
from block.wire.problems import PROBLEM_TYPE, problem_document

logger = logging.getLogger(__name__)


@dataclass(slots=True)  # not frozen: per-request record, built on the hot path
class Answer:
    """A complete HTTP answer: status, headers (besides framing), body."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def to_response(self) -> web.Response:
        return web.Response(status=self.status, body=self.body, headers=self.headers)


def problem(status: int, title: str, detail: str, request_id: str) -> Answer:
    body = problem_document(status, title, detail, request_id)
    # What OpenAI clients read for the exception message.
    body["error"] = {"message": detail, "type": title.lower().replace(" ", "_"), "code": status}
    return Answer(status, json.dumps(body).encode(), {"Content-Type": PROBLEM_TYPE})


def error_answer(e: Exception, request_id: str) -> Answer:
    """The problem+json answer for an exception a request raised; never a traceback.
    aiohttp's own `HTTPException`s (404, 405, 413, ...) keep their status; anything unexpected
    is logged and answered as a 500 that points at the log."""
    if isinstance(e, BlockError):
        answer = problem(e.status, e.title, e.detail, request_id)
        if isinstance(e, Overloaded):
            answer.headers["Retry-After"] = str(max(1, round(e.retry_after_s)))
        elif isinstance(e, Unauthorized):
            answer.headers["WWW-Authenticate"] = 'Bearer realm="block"'
        return answer
    if isinstance(e, web.HTTPException) and e.status >= 400:
        detail = e.text if e.text and e.text != f"{e.status}: {e.reason}" else e.reason
        return problem(e.status, e.reason, detail, request_id)
    logger.error("request %s failed", request_id, exc_info=e)
    return problem(500, "Internal error", "see the gateway log", request_id)
