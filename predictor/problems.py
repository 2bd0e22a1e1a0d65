"""HTTP errors as `application/problem+json` (RFC 9457), and reading JSON bodies safely.

One middleware maps `BlockError`s by class to their status and rewrites aiohttp's own
text/plain errors (404, 405, 413) the same way. Bodies also carry OpenAI's `error` object, so
OpenAI clients show the message: `{"type", "title", "status", "detail", "request_id",
"error": {"message", "type", "code"}}`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from block.errors import BlockError, InvalidRequest
from block.wire.json_body import parse_json_body
from block.wire.openai import validation_message
from block.wire.problems import PROBLEM_TYPE, problem_document

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_OPENAI_TYPES = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error"}


class BodyTooLarge(InvalidRequest):
    status = 413
    title = "Payload too large"


REQUEST_ID = web.RequestKey("request_id", str)


def request_id(request: web.Request) -> str:
    rid = request.get(REQUEST_ID)
    if rid is None:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        request[REQUEST_ID] = rid
    return rid


def problem(status: int, title: str, detail: str, rid: str) -> web.Response:
    body = problem_document(status, title, detail, rid)
    body["error"] = {
        "message": detail,
        "type": _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "error"),
        "code": status,
    }
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type=PROBLEM_TYPE,
        headers={"x-request-id": rid},
    )


def problem_bytes(status: int, title: str, detail: str) -> bytes:
    """The same body for places that cannot return a response (an SSE error event)."""
    return json.dumps(
        {"error": {"message": detail, "type": title, "code": status}}, separators=(",", ":")
    ).encode()


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BlockError as e:
        # 502s are worth a look; 503s are expected while a dependency is down (readiness
        # probes would repeat them every few seconds).
        level = logging.WARNING if e.status == 502 else logging.DEBUG
        logger.log(level, "%s %s: %s", request.method, request.path, e.detail)
        return problem(e.status, e.title, e.detail, request_id(request))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        detail = e.text or e.reason
        if e.status == 413:
            detail = f"request body too large (limit {request.app[MAX_BODY_KEY]} bytes)"
        elif e.status == 404:
            detail = f"no route for {request.method} {request.path}"
        elif e.status == 405:
            detail = f"method {request.method} not allowed on {request.path}"
        return problem(e.status, e.reason, detail, request_id(request))
    except (ConnectionResetError, BrokenPipeError):
        raise  # the client went away; nobody to answer
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        detail = "internal error; see the server log"
        return problem(500, "Internal error", detail, request_id(request))


MAX_BODY_KEY = web.AppKey("max_body_bytes", int)


async def read_body(request: web.Request) -> bytes:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise BodyTooLarge(
            f"request body too large (limit {request.app[MAX_BODY_KEY]} bytes)"
        ) from e
    if not raw.strip():
        raise InvalidRequest("request body is empty; expected a JSON object")
    return raw


def parse_json(raw: bytes) -> Any:
    try:
        return parse_json_body(raw)
    except ValueError as e:
        raise InvalidRequest(f"request body is not valid JSON: {e}") from e


def validate(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InvalidRequest(validation_message(e)) from e


def new_app(max_body_bytes: int) -> web.Application:
    """An application with the problem middleware and the body limit both services use."""
    app = web.Application(middlewares=[problems_middleware], client_max_size=max_body_bytes)
    app[MAX_BODY_KEY] = max_body_bytes
    return app
