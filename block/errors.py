"""The error tree shared by every Block service.

    BlockError
    ├── InvalidRequest      400/422: the caller sent something wrong; fix the input
    ├── Unauthorized        401: missing or wrong API key
    ├── NotFound            404
    ├── Overloaded          429: every replica is saturated; retry after `retry_after_s`
    ├── UpstreamError       502: the engine or a dependency answered badly
    ├── Unavailable         503: nothing can serve right now (no replicas, engine down)
    └── ConfigError         a configuration or data file is unusable (raised at start-up)

HTTP services map these to `application/problem+json` bodies (RFC 9457) in one middleware;
the status code travels with the class so the mapping needs no table.
"""

from __future__ import annotations


class BlockError(Exception):
    """Root of every error Block raises on purpose."""

    status: int = 500
    title: str = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRequest(BlockError):
    status = 400
    title = "Invalid request"


class Unauthorized(BlockError):
    status = 401
    title = "Unauthorized"


class Forbidden(BlockError):
    status = 403
    title = "Forbidden"


class NotFound(BlockError):
    status = 404
    title = "Not found"


class Overloaded(BlockError):
    status = 429
    title = "Overloaded"

    def __init__(self, detail: str, retry_after_s: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class UpstreamError(BlockError):
    status = 502
    title = "Upstream error"


class Unavailable(BlockError):
    status = 503
    title = "Service unavailable"


class ConfigError(BlockError):
    title = "Configuration error"
