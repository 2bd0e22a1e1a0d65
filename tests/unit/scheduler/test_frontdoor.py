"""The front door on loopback: its lean path, and connections handed to aiohttp intact.

A real `FrontDoor` listens on a free port with aiohttp's protocol for a small app behind it,
and one lean route whose handler echoes what it parsed; clients write exact bytes over raw
sockets, so the framing cases (keep-alive, pipelining, chunked bodies, split writes) are what
goes over the wire.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from block.scheduler.answers import Answer
from block.scheduler.frontdoor import FrontDoor, LeanRequest


@dataclass
class Door:
    door: FrontDoor
    port: int
    lean: list[LeanRequest] = field(default_factory=list)
    aio: list[str] = field(default_factory=list)  # "METHOD path body" seen by aiohttp
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def door() -> AsyncIterator[Door]:
    seen_aio: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen_aio.append(f"{request.method} {request.path} {body.decode()}")
        return web.json_response({"by": "aiohttp", "path": request.path})

    app = web.Application(client_max_size=1000)
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    assert runner.server is not None
    state: dict[str, Door] = {}

    async def lean(req: LeanRequest) -> Answer | None:
        d = state["door"]
        d.lean.append(req)
        if req.body == b"decline":
            return None
        if req.body == b"slow":
            d.started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                d.cancelled.set()
                raise
        if req.body == b"snowman":
            return Answer(200, b"{}", {"X-Snow": "\u2603"})  # not Latin-1: cannot go out
        payload = {"by": "lean", "path": req.path, "body": req.body.decode()}
        return Answer(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    fd = FrontDoor(runner.server, {"/lean": lean}, max_body_bytes=1000, keepalive_timeout_s=0.3)
    server = await asyncio.get_running_loop().create_server(fd, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    d = Door(fd, port, aio=seen_aio)
    state["door"] = d
    yield d
    server.close()
    await fd.shutdown(0.5)
    await runner.cleanup()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer framed by Content-Length."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    return status, headers, body


async def test_lean_route_answers_many_requests_on_one_connection(door: Door) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
    for i in range(3):
        writer.write(post("/lean", b"n%d" % i, "X-Request-Id: abc\r\n"))
        status, headers, body = await read_answer(reader)
        assert status == 200 and json.loads(body) == {
            "by": "lean",
            "path": "/lean",
            "body": f"n{i}",
        }
        assert headers["content-type"] == "application/json" and "date" in headers
    writer.close()
    assert [r.body for r in door.lean] == [b"n0", b"n1", b"n2"]
    assert door.lean[0].headers["x-request-id"] == "abc" and door.lean[0].peer == "127.0.0.1"
    assert door.door.answered == 3 and door.door.handed_over == 0


async def test_other_paths_and_methods_go_to_aiohttp_for_the_rest_of_the_connection(
    door: Door,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
    writer.write(post("/lean", b"first"))
    assert json.loads((await read_answer(reader))[2])["by"] == "lean"
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert json.loads((await read_answer(reader))[2]) == {"by": "aiohttp", "path": "/metrics"}
    # The connection now belongs to aiohttp, lean routes included.
    writer.write(post("/lean", b"second"))
    assert json.loads((await read_answer(reader))[2])["by"] == "aiohttp"
    writer.close()
    assert [r.body for r in door.lean] == [b"first"]
    assert door.aio == ["GET /metrics ", "POST /lean second"]
    assert door.door.handed_over == 1


@pytest.mark.parametrize(
    "raw",
    [
        # chunked body
        b"POST /lean HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        # a query string
        b"POST /lean?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        # two Content-Length headers
        b"POST /lean HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    ],
    ids=["chunked", "query", "double-length"],
)
async def test_unusual_framing_is_left_to_aiohttp(door: Door, raw: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
    writer.write(raw)
    status, _, body = await read_answer(reader)
    writer.close()
    assert door.lean == [] and door.door.handed_over == 1
    if b"Content-Length: 5\r\nContent-Length" in raw:
        assert status == 400  # aiohttp's own verdict on an ambiguous request
    else:
        assert status == 200 and json.loads(body)["by"] == "aiohttp"
        assert door.aio == ["POST /lean hello"]


async def test_oversized_body_gets_aiohttps_413(door: Door) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
    writer.write(post("/lean", b"x" * 2000))
    status, _, _ = await read_answer(reader)
    writer.close()
    assert status == 413 and door.lean == []


async def test_declined_request_is_replayed_to_aiohttp(door: Door) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
    writer.write(post("/lean", b"decline"))
    status, _, body = await read_answer(reader)
    writer.close()
    assert status == 200 and json.loads(body)["by"] == "aiohttp"
    assert [r.body for r in door.lean] == [b"decline"] and door.aio == ["POST /lean decline"]


async def test_pipelined_requests_are_answered_in_order(door: Door) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
    writer.write(post("/lean", b"a") + post("/lean", b"b") + post("/lean", b"c"))
    bodies = [json.loads((await read_answer(reader))[2])["body"] for _ in range(3)]
    writer.close()
    assert bodies == ["a", "b", "c"]


async def test_head_and_body_split_across_writes(door: Door) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
    raw = post("/lean", b'{"prompt": "split"}')
    for piece in (raw[:7], raw[7:30], raw[30:-3], raw[-3:]):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.01)
    status, _, body = await read_answer(reader)
    writer.close()
    assert status == 200 and json.loads(body)["body"] == '{"prompt": "split"}'


async def test_connection_close_and_http10(door: Door) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
    writer.write(post("/lean", b"bye", "Connection: close\r\n"))
    _, headers, _ = await read_answer(reader)
    assert headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
    writer.write(b"POST /lean HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
    _, headers, _ = await read_answer(reader)
    assert headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_client_leaving_cancels_its_request(door: Door) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", door.port)
    writer.write(post("/lean", b"slow"))
    await asyncio.wait_for(door.started.wait(), 5)
    writer.close()
    await asyncio.wait_for(door.cancelled.wait(), 5)


async def test_idle_connection_is_closed_after_the_keepalive_timeout(door: Door) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
    writer.write(post("/lean", b"once"))
    await read_answer(reader)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # 0.3 s of silence
    assert not door.door.connections


async def test_an_http_client_library_sees_one_server(door: Door) -> None:
    url = f"http://127.0.0.1:{door.port}"
    async with aiohttp.ClientSession() as s:
        for path in ("/lean", "/other", "/lean"):
            async with s.post(url + path, data=b"lib") as r:
                assert r.status == 200
                assert (await r.json())["path"] == path


async def test_an_answer_that_cannot_be_encoded_is_a_500_and_a_closed_connection(
    door: Door,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
    writer.write(post("/lean", b"snowman"))
    status, headers, body = await read_answer(reader)
    assert status == 500 and headers["connection"] == "close"
    assert json.loads(body)["detail"] == "see the gateway log"
    assert await asyncio.wait_for(reader.read(), 5) == b""
