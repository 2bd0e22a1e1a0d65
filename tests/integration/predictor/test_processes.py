"""`block engine` and `block predictor` as real processes: killing the engine mid-stream,
restarting the sidecar."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

MODEL = "meta-llama/Llama-2-7b-hf"
Start = Callable[..., Awaitable[Any]]
Wait = Callable[..., Awaitable[None]]
LONG = {"model": MODEL, "prompt": "Hi", "max_tokens": 3000, "ignore_eos": True, "stream": True}


async def test_engine_killed_mid_stream(
    processes: Callable[[list[str]], Any],
    start_sidecar: Start,
    http: aiohttp.ClientSession,
    wait: Wait,
) -> None:
    engine = processes(["engine"])
    engine.start()
    await engine.wait_http("/health")
    side = await start_sidecar(engine.url, reconcile_interval_s=0.1)
    await wait(lambda: _ready(http, side.url), 10, "the sidecar to see the engine")
    async with http.post(side.url + "/v1/completions", json=LONG) as r:
        assert r.status == 200
        for _ in range(5):
            await r.content.readuntil(b"\n\n")
        engine.kill(signal.SIGKILL)
        rest = await r.read()  # the stream ends instead of hanging
    last = [e for e in rest.split(b"\n\n") if e][-1]
    error = json.loads(last.removeprefix(b"data: "))["error"]
    assert error["code"] == 502 and "stopped mid-stream" in error["message"]
    assert not side.sidecar.twin.requests, "the twin dropped the request"

    async def not_ready() -> bool:
        return not await _ready(http, side.url)

    await wait(not_ready, 5, "/readyz to fail")
    async with http.post(side.url + "/v1/completions", json=LONG) as r:
        assert r.status == 503
        assert "not reachable" in (await r.json(content_type=None))["detail"]


async def test_sidecar_restart(
    processes: Callable[[list[str]], Any],
    start_engine: Start,
    http: aiohttp.ClientSession,
    wait: Wait,
) -> None:
    eng = await start_engine()
    sidecar = processes(["predictor", "--engine-url", eng.url, "--reconcile-interval", "0.1"])
    sidecar.start()
    await sidecar.wait_http("/readyz")
    async with http.post(sidecar.url + "/v1/completions", json=LONG) as r:
        await r.content.readuntil(b"\n\n")
        assert eng.twin.engine.load.num_running == 1
        sidecar.kill(signal.SIGKILL)
        with contextlib.suppress(aiohttp.ClientPayloadError):  # the proxy died mid-chunk
            await r.read()

    async def engine_idle() -> bool:
        return eng.twin.engine.load.num_running == 0

    await wait(engine_idle, 5, "the engine to drop the orphaned request")
    sidecar.start()  # same port
    await sidecar.wait_http("/readyz")
    state = await (await http.get(sidecar.url + "/v1/state")).json()
    assert state["inflight"] == 0 and state["engine_up"] is True
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 4, "ignore_eos": True}
    async with http.post(sidecar.url + "/v1/completions", json=body) as r:
        assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] == 4
    sidecar.kill(signal.SIGTERM)  # a clean shutdown
    assert sidecar.proc.returncode == 0


async def _ready(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url + "/readyz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def test_cli_rejects_bad_settings(processes: Callable[[list[str]], Any]) -> None:
    proc = processes(["predictor", "--engine-url", "ftp://nowhere"])
    proc.start()
    assert proc.proc.wait(timeout=30) == 2
    assert "engine_url must start with http" in proc.log.read_text()
    await asyncio.sleep(0)
