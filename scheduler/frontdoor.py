"""The gateway's listener: a lean HTTP/1.1 path for whole completions, aiohttp for the rest.

Why: on the request path of a non-streamed completion, aiohttp's server side (request and
response objects, its parser's message objects, the handler task, middleware, the router)
cost about as much CPU as everything the gateway does of its own (bench/gateway_overhead.py),
and that CPU is added latency. This path parses what it needs of a request itself and writes
the answer in one send.

How: every connection starts on `_Conn`. It takes a request only when the head is plain:
`POST` to one of the lean routes (exact path, no query), HTTP/1.0 or 1.1, a body framed by
one `Content-Length` within the limit, no `Transfer-Encoding`, `Expect` or `Upgrade`, no
repeated framing or identity headers, no folded lines. The route's handler answers with an
`Answer`, or with None to decline (the gateway declines streams). Anything else (other paths
and methods, chunked bodies, oversized or malformed heads, declined requests) is handed with
the connection to aiohttp's own protocol, the bytes replayed as they were received, and that
connection stays with aiohttp: one code path for the edge cases, which answers as it always
did. Keep-alive, pipelining (one request at a time, in order), an idle timeout, and a client
that leaves cancelling its request (as aiohttp's `handler_cancellation`) are handled here.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from block.scheduler.answers import Answer, problem

logger = logging.getLogger(__name__)

# Longer heads go to aiohttp, which answers them (its limit on a line is 8190 bytes).
MAX_HEAD_BYTES = 8190
# Pipelined bytes buffered while a request is handled before reading pauses.
MAX_BUFFERED_BYTES = 1 << 20
# Headers whose repetition makes a request ambiguous: aiohttp decides those.
_SINGLE = frozenset(
    {"content-length", "transfer-encoding", "host", "authorization", "x-api-key", "x-request-id"}
)
_DECLINE = frozenset({"transfer-encoding", "expect", "upgrade"})
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}


@dataclass(slots=True)  # not frozen: per-request record, built on the hot path
class LeanRequest:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case; values stripped
    body: bytes
    peer: str


LeanHandler = Callable[[LeanRequest], Awaitable[Answer | None]]


class FrontDoor:
    """The protocol factory for `loop.create_server`; `fallback` makes aiohttp's protocol
    (`web.AppRunner(...).server`)."""

    def __init__(
        self,
        fallback: Callable[[], asyncio.Protocol],
        routes: Mapping[str, LeanHandler],
        max_body_bytes: int,
        keepalive_timeout_s: float = 75.0,
        access_log: logging.Logger | None = None,
    ) -> None:
        self.fallback = fallback
        self.routes = dict(routes)
        self.max_body_bytes = max_body_bytes
        self.keepalive_timeout_s = keepalive_timeout_s
        self.access_log = access_log
        self.connections: set[_Conn] = set()
        self.closing = False
        self.answered = 0  # requests answered on the lean path
        self.handed_over = 0  # connections given to aiohttp
        self._date = b""
        self._date_second = -1

    def __call__(self) -> _Conn:
        return _Conn(self)

    def date(self) -> bytes:
        """The `Date` header's value, formatted once a second."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = email.utils.formatdate(now, usegmt=True).encode()
        return self._date

    async def shutdown(self, timeout_s: float) -> None:
        """Close idle connections now; let requests in progress finish for up to
        `timeout_s`, then close what is left (which cancels them)."""
        self.closing = True
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
        end = time.monotonic() + timeout_s
        while any(c.task is not None for c in self.connections) and time.monotonic() < end:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()


@dataclass(slots=True)  # not frozen: per-request record, built on the hot path
class _Head:
    method: str
    path: str
    headers: dict[str, str]
    handler: LeanHandler
    body_start: int
    total: int  # bytes of head and body
    keep_alive: bool
    version: str


class _Conn(asyncio.Protocol):
    """One client connection while it is on the lean path."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.pending: _Head | None = None  # a parsed head whose body is still arriving
        self.peer = ""
        self.paused = False
        self.last_active = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.door.connections.add(self)
        self.last_active = self.loop.time()
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.last_active = self.loop.time()
        if self.task is None:
            self._next()
        elif len(self.buf) > MAX_BUFFERED_BYTES and not self.paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self.paused = True

    def eof_received(self) -> bool | None:
        return None  # close: a client that half-closes gets no answer (as with aiohttp)

    def connection_lost(self, exc: Exception | None) -> None:
        self.door.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None:
            self.task.cancel()  # the client left: stop its upstream request too

    # Requests

    def _next(self) -> None:
        """Start the next whole request in the buffer, or wait for more bytes."""
        head = self.pending
        if head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD_BYTES:
                    self._hand_over()
                return
            head = self._parse_head(end)
            if head is None:
                self._hand_over()
                return
        if len(self.buf) < head.total:
            self.pending = head  # the body is still arriving
            return
        self.pending = None
        body = bytes(self.buf[head.body_start : head.total])
        req = LeanRequest(head.method, head.path, head.headers, body, self.peer)
        self.task = self.loop.create_task(self._handle(head, req))

    def _parse_head(self, end: int) -> _Head | None:
        """The head in `buf[:end]` if this path takes it, else None (aiohttp will)."""
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return None
        method, path, version = parts
        handler = self.door.routes.get(path)
        if method != "POST" or handler is None or version not in ("HTTP/1.1", "HTTP/1.0"):
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or " " in name:
                return None  # malformed, or a folded line
            name = name.lower()
            if name in headers:
                if name in _SINGLE:
                    return None
                headers[name] += ", " + value.strip()
            else:
                headers[name] = value.strip()
        if not _DECLINE.isdisjoint(headers):
            return None
        length = headers.get("content-length", "")
        if not (length.isascii() and length.isdigit()):
            return None
        if int(length) > self.door.max_body_bytes:
            return None  # aiohttp answers 413 in the gateway's format
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.1":
            keep_alive = "close" not in connection
        else:
            keep_alive = "keep-alive" in connection
        return _Head(
            method, path, headers, handler, end + 4, end + 4 + int(length), keep_alive, version
        )

    async def _handle(self, head: _Head, req: LeanRequest) -> None:
        started = time.perf_counter()
        try:
            answer = await head.handler(req)
        except asyncio.CancelledError:
            return  # the client left
        except Exception as e:  # a handler maps its own errors; this is the last resort
            logger.error("lean request %s %s failed", req.method, req.path, exc_info=e)
            answer = problem(500, "Internal error", "see the gateway log", "")
        self.task = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if answer is None:
            self._hand_over()
            return
        keep_alive = head.keep_alive and not self.door.closing
        try:
            data = self._head_bytes(answer, keep_alive) + answer.body
        except UnicodeEncodeError as e:  # a header value beyond Latin-1: never sent half
            logger.error("lean answer to %s %s has a bad header", req.method, req.path, exc_info=e)
            answer = problem(500, "Internal error", "see the gateway log", "")
            keep_alive = False
            data = self._head_bytes(answer, keep_alive) + answer.body
        transport.write(data)
        self.door.answered += 1
        if self.door.access_log is not None and self.door.access_log.isEnabledFor(logging.INFO):
            self.door.access_log.info(
                '%s "%s %s %s" %d %d %.6fs',
                req.peer,
                req.method,
                req.path,
                head.version,
                answer.status,
                len(answer.body),
                time.perf_counter() - started,
            )
        del self.buf[: head.total]
        if not keep_alive:
            transport.close()
            return
        self.last_active = self.loop.time()
        if self.paused:
            transport.resume_reading()
            self.paused = False
        if self.buf:
            self._next()

    def _head_bytes(self, answer: Answer, keep_alive: bool) -> bytes:
        reason = _REASONS.get(answer.status, b"Unknown")
        lines = [
            b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\nDate: %s\r\nServer: block\r\n"
            % (answer.status, reason, len(answer.body), self.door.date())
        ]
        for name, value in answer.headers.items():
            # Values are the gateway's own or an upstream's parsed header line: no CR/LF.
            lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        if not keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def _hand_over(self) -> None:
        """Give this connection, and every byte received on it so far, to aiohttp."""
        transport = self.transport
        assert transport is not None
        self.door.connections.discard(self)
        self.door.handed_over += 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        protocol = self.door.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.paused:
            transport.resume_reading()
            self.paused = False
        data, self.buf = bytes(self.buf), bytearray()
        self.transport = None
        if data:
            protocol.data_received(data)

    # Idle connections

    def _arm_timer(self) -> None:
        delay = self.last_active + self.door.keepalive_timeout_s - self.loop.time()
        self.timer = self.loop.call_later(max(0.0, delay), self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.transport is None:
            return
        if self.task is None and (
            self.loop.time() - self.last_active >= self.door.keepalive_timeout_s
        ):
            self.close()  # idle, or a request that stopped arriving
        else:
            self._arm_timer()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
