"""The RFC 9457 problem document every Block HTTP service answers errors with."""

from __future__ import annotations

from typing import Any

PROBLEM_TYPE = "application/problem+json"


def problem_document(status: int, title: str, detail: str, request_id: str) -> dict[str, Any]:
    """`type`, `title`, `status`, `detail` and the request id; services may add members."""
    return {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": request_id,
    }
