"""The predictor fan-out's HTTP/1.1 client against servers that frame answers every legal way.

Raw asyncio servers send exact bytes, so each framing (Content-Length, chunked, close
delimited), keep-alive reuse, and every failure (garbage, early close, silence) is exercised.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from block.scheduler.predictconn import PredictorHttpError, PredictorPool

Reply = Callable[[bytes], bytes | None]  # request bytes -> response bytes (None: close)


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Reply], asyncio.Future[tuple[str, list]]]]:
    servers: list[asyncio.Server] = []

    async def start(reply: Reply) -> tuple[str, list[int]]:
        connections: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(length)
                    out = reply(body)
                    if out is None:
                        break
                    writer.write(out)
                    await writer.drain()
                    if b"connection: close" in out.lower():
                        break
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}", connections

    yield start  # type: ignore[misc]
    for s in servers:
        s.close()
        await s.wait_closed()


def fixed(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def test_content_length_and_keep_alive(raw_server) -> None:
    url, connections = await raw_server(lambda req: fixed(b'{"echo": ' + req + b"}"))
    pool = PredictorPool(url, 1.0)
    for i in range(3):
        status, body = await pool.post(b'{"n": %d}' % i)
        assert (status, body) == (200, b'{"echo": {"n": %d}}' % i)
    assert len(connections) == 1  # one connection, reused
    pool.close()


async def test_concurrent_calls_open_more_connections(raw_server) -> None:
    url, connections = await raw_server(lambda req: fixed(req))
    pool = PredictorPool(url, 1.0)
    results = await asyncio.gather(*(pool.post(b"%d" % i) for i in range(4)))
    assert sorted(b for _, b in results) == [b"0", b"1", b"2", b"3"]
    assert len(connections) == 4
    await asyncio.gather(*(pool.post(b"x") for _ in range(4)))
    assert len(connections) == 4  # all four kept alive and reused
    pool.close()


async def test_chunked_answers(raw_server) -> None:
    def chunked(req: bytes) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n"
        )

    url, connections = await raw_server(chunked)
    pool = PredictorPool(url, 1.0)
    assert await pool.post(b"{}") == (200, b"hello, world")
    assert await pool.post(b"{}") == (200, b"hello, world")
    assert len(connections) == 1
    pool.close()


async def test_close_delimited_and_connection_close(raw_server) -> None:
    url, connections = await raw_server(
        lambda req: b"HTTP/1.0 503 Busy\r\nConnection: close\r\n\r\nlater"
    )
    pool = PredictorPool(url, 1.0)
    assert await pool.post(b"{}") == (503, b"later")
    assert await pool.post(b"{}") == (503, b"later")
    assert len(connections) == 2  # not reused after close
    pool.close()


async def test_split_writes_are_reassembled() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for piece in (b"HTTP/1.1 200 OK\r\nContent-", b"Length: 4\r\n\r", b"\nab", b"cd"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = PredictorPool(f"http://127.0.0.1:{port}", 1.0)
    assert await pool.post(b"{}") == (200, b"abcd")
    pool.close()
    server.close()


@pytest.mark.parametrize(
    "reply",
    [
        lambda req: None,  # closes without answering
        lambda req: b"garbage\r\n\r\n",
        lambda req: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nshort",
        lambda req: b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
    ],
)
async def test_failures_raise(raw_server, reply: Reply) -> None:
    url, _ = await raw_server(reply)
    pool = PredictorPool(url, 1.0)
    with pytest.raises((PredictorHttpError, OSError)):
        async with asyncio.timeout(2):
            await pool.post(b"{}")
    pool.close()


async def test_refused_connection_raises() -> None:
    pool = PredictorPool("http://127.0.0.1:9", 1.0)
    with pytest.raises(OSError):
        await pool.post(b"{}")


async def test_cancelled_call_drops_its_connection() -> None:
    stall = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await stall.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/predict", slow)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    pool = PredictorPool(str(server.make_url("")), 1.0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await pool.post(b"{}")
    stall.set()
    assert not pool._idle  # the abandoned connection was not put back
    assert (await pool.post(b"{}"))[0] == 200  # a fresh one works (aiohttp, chunk-free JSON)
    pool.close()
    await server.close()
