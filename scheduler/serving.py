"""Run the gateway: aiohttp's app behind the front door (`block.scheduler.frontdoor`).

`start` serves in the running loop (tests, benchmarks); `run` serves until SIGINT or SIGTERM
(the command). Both put the front door on the listening socket: the completions endpoints take
its lean path, every other request and connection goes to aiohttp's own server for the same
app, with handler cancellation on (a client that leaves cancels its upstream request).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from typing import Any

import yarl
from aiohttp import web

from block.scheduler.frontdoor import FrontDoor
from block.scheduler.metrics import FrontDoorCollector
from block.scheduler.service import LEAN_ROUTES, METRICS, SETTINGS

logger = logging.getLogger(__name__)


class GatewayServer:
    """A started gateway: where it listens, and `close()`."""

    def __init__(
        self, runner: web.AppRunner, door: FrontDoor, server: asyncio.Server, host: str, port: int
    ) -> None:
        self.runner = runner
        self.door = door
        self.server = server
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def make_url(self, path: str) -> yarl.URL:
        return yarl.URL(self.url + path)

    async def close(self, shutdown_timeout_s: float = 1.0) -> None:
        """Stop listening, let requests in progress finish (bounded), then clean up."""
        self.server.close()
        await self.door.shutdown(shutdown_timeout_s)
        await self.runner.shutdown()
        await self.runner.cleanup()


async def start(
    app: web.Application,
    host: str = "127.0.0.1",
    port: int = 0,
    access_log: logging.Logger | None = None,
    shutdown_timeout_s: float = 1.0,
) -> GatewayServer:
    """Serve `app` in the running loop; port 0 picks a free port."""
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=access_log,
        shutdown_timeout=shutdown_timeout_s,
    )
    await runner.setup()  # the app's start-up (cleanup_ctx) runs here
    assert runner.server is not None
    settings = app.get(SETTINGS)
    max_body = settings.max_body_bytes if settings is not None else 1 << 20
    routes = app.get(LEAN_ROUTES) or {}
    door = FrontDoor(runner.server, routes, max_body, access_log=access_log)
    metrics = app.get(METRICS)
    collector = FrontDoorCollector(door)
    if metrics is not None:
        metrics.registry.register(collector)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(door, sock=sock, backlog=1024)
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    return GatewayServer(runner, door, server, host, sock.getsockname()[1])


def run(
    app: web.Application,
    host: str,
    port: int,
    loop: asyncio.AbstractEventLoop,
    access_log: logging.Logger | None = None,
    shutdown_timeout_s: float = 30.0,
) -> int:
    """Serve until SIGINT or SIGTERM; requests in progress then get `shutdown_timeout_s`."""

    async def main() -> None:
        gateway = await start(app, host, port, access_log, shutdown_timeout_s)
        logger.info("listening on %s", gateway.url)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # What start-up built lives as long as the process: keep it out of the collector's
        # generations, so collections on the request path scan only the requests' objects.
        gc.collect()
        gc.freeze()
        try:
            await stop.wait()
        finally:
            logger.info("shutting down")
            await gateway.close(shutdown_timeout_s)

    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main())
    finally:
        _cancel_all(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return 0


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks: set[asyncio.Task[Any]] = asyncio.all_tasks(loop)
    for t in tasks:
        t.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
