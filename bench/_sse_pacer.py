"""A paced SSE completion stream for bench/envoy_epp.py: one token event per write, a gap apart.

    python bench/_sse_pacer.py PORT TOKENS GAP_MS

Every POST gets `text/event-stream` (chunked): its first token at once, then one token event
per chunk every GAP_MS, then `data: [DONE]`. The body is read and ignored. All streams move
on one shared timer (one wake-up per gap for all of them, on uvloop), so the replica side
stays cheap while every token still reaches the proxy as its own write, as an engine's do.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

TOKEN = (
    b'data: {"id":"cmpl-bench","object":"text_completion","created":0,"model":"m",'
    b'"choices":[{"index":0,"text":" sea","logprobs":null,"finish_reason":null}]}\n\n'
)
DONE = b"data: [DONE]\n\n"
HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


TOKEN_CHUNK = chunk(TOKEN)
LAST = TOKEN_CHUNK + chunk(DONE) + b"0\r\n\r\n"


class Pacer:
    """The shared clock: every `gap_s`, one more token to each stream in progress."""

    def __init__(self, tokens: int, gap_s: float) -> None:
        self.tokens = tokens
        self.gap_s = gap_s
        self.streams: dict[Stream, int] = {}  # stream -> tokens still to send
        self.ticking = False

    def start(self, stream: Stream) -> None:
        if self.tokens <= 1:
            stream.write(HEAD + LAST)
            stream.done()
            return
        stream.write(HEAD + TOKEN_CHUNK)
        self.streams[stream] = self.tokens - 1
        if not self.ticking:
            self.ticking = True
            asyncio.get_running_loop().call_later(self.gap_s, self.tick)

    def tick(self) -> None:
        for stream, left in list(self.streams.items()):
            if stream.closed:
                del self.streams[stream]
            elif left <= 1:
                del self.streams[stream]
                stream.write(LAST)
                stream.done()
            else:
                self.streams[stream] = left - 1
                stream.write(TOKEN_CHUNK)
        if self.streams:
            asyncio.get_running_loop().call_later(self.gap_s, self.tick)
        else:
            self.ticking = False


class Stream(asyncio.Protocol):
    """One keep-alive connection: requests in turn (head, Content-Length body), no pipelining."""

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self.buf = b""
        self.busy = False
        self.closed = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.next_request()

    def next_request(self) -> None:
        if self.busy:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        length = 0
        for line in self.buf[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buf) < end + 4 + length:
            return
        self.buf = self.buf[end + 4 + length :]
        self.busy = True
        self.pacer.start(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def done(self) -> None:
        self.busy = False
        if self.buf:
            self.next_request()


async def serve(port: int, tokens: int, gap_s: float) -> None:
    pacer = Pacer(tokens, gap_s)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Stream(pacer), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    port, tokens, gap_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    import uvloop  # a dependency of the project on Linux

    uvloop.run(serve(port, tokens, gap_ms / 1e3))


if __name__ == "__main__":
    main()
