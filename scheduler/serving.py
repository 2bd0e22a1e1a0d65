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
from dataclasses import dataclass

import yarl
from aiohttp import web

from block.scheduler.frontdoor import FrontDoor
from block.scheduler.metrics import FrontDoorCollector
from block.scheduler.service import LEAN_ROUTES, METRICS, SETTINGS

# Net new container objects between young collections once serving (CPython's default: 700).
GC_YOUNG_THRESHOLD = 7000

logger = logging.getLogger(__name__)


@dataclass
class GatewayServer:
    """A started gateway: where it listens, and `close()`."""

    runner: web.AppRunner
    door: FrontDoor
    server: asyncio.Server
    host: str
    port: int
    shutdown_timeout_s: float

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def make_url(self, path: str) -> yarl.URL:
        return yarl.URL(self.url + path)

    async def close(self) -> None:
        """Stop listening, let requests in progress finish (bounded), then clean up."""
        self.server.close()
        await self.door.shutdown(self.shutdown_timeout_s)
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
    if metrics is not None:
        metrics.registry.register(FrontDoorCollector(door))
    try:
        server = await asyncio.get_running_loop().create_server(
            door, host, port, reuse_address=True, backlog=1024
        )
    except BaseException:
        await runner.cleanup()
        raise
    bound = server.sockets[0].getsockname()[1]
    return GatewayServer(runner, door, server, host, bound, shutdown_timeout_s)


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
        # A request's objects die by reference count, so young collections only rescan what
        # is in flight: at CPython's default of 700, 1,293 of them in 49,199 requests (64 at a
        # time) found no garbage and cost ~2.6 µs of CPU per request. At 7000 a steady load
        # triggers next to none (bench/README.md, gateway_overhead).
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        try:
            await stop.wait()
        finally:
            logger.info("shutting down")
            await gateway.close()

    # The Runner cancels what is left, finishes async generators and closes the loop.
    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        runner.run(main())
    return 0
