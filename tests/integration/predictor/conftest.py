"""Real engine twins and predictor sidecars on loopback, in-process or as `block` processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from block.predictor.engine import ENGINE, EngineTwin, create_engine_app
from block.predictor.service import SIDECAR, Sidecar, create_app
from block.predictor.serving import Server, start
from block.predictor.settings import EngineSettings, PredictorSettings

if TYPE_CHECKING:
    # The session-wide `resources` fixture lives in tests/integration/conftest.py.
    from conftest import Resources


@dataclass
class Engine:
    server: Server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def twin(self) -> EngineTwin:
        return self.server.runner.app[ENGINE]


@dataclass
class Side:
    server: Server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def sidecar(self) -> Sidecar:
        return self.server.runner.app[SIDECAR]


@pytest.fixture
async def start_engine(resources: Resources) -> AsyncIterator[Callable[..., Awaitable[Engine]]]:
    servers: list[Server] = []

    async def make(**kw: Any) -> Engine:
        settings = EngineSettings(port=0, **kw)
        app = create_engine_app(settings, resources.tokens, resources.lengths, resources.latency)
        server = await start(app)
        servers.append(server)
        return Engine(server)

    yield make
    for s in servers:
        await s.stop()


@pytest.fixture
async def start_sidecar(resources: Resources) -> AsyncIterator[Callable[..., Awaitable[Side]]]:
    servers: list[Server] = []

    async def make(engine_url: str, **kw: Any) -> Side:
        kw.setdefault("reconcile_interval_s", 0.2)
        settings = PredictorSettings(port=0, engine_url=engine_url, **kw)
        app = create_app(settings, resources.tokens, resources.lengths, resources.latency)
        server = await start(app)
        servers.append(server)
        return Side(server)

    yield make
    for s in servers:
        await s.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Process:
    """A `block` sub-command running in its own process."""

    def __init__(self, args: list[str], port: int, log: Path) -> None:
        self.args = args
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = Path(sys.executable).parent / "block"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(exe), *self.args, "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)

    async def wait_http(self, path: str, timeout_s: float = 30.0) -> None:
        async with aiohttp.ClientSession() as s:

            async def up() -> bool:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.args[0]} exited: {self.log.read_text()[-2000:]}")
                try:
                    async with s.get(self.url + path) as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(up, timeout_s, f"{self.args[0]} on port {self.port}")


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[[list[str]], Process]]:
    started: list[Process] = []

    def make(args: list[str]) -> Process:
        p = Process(args, free_port(), tmp_path / f"{args[0]}-{len(started)}.log")
        started.append(p)
        return p

    yield make
    for p in started:
        p.kill()


@pytest.fixture
def wait() -> Callable[..., Awaitable[None]]:
    """`await wait(check, timeout_s, what)`: poll an async check until it holds."""
    return wait_until
