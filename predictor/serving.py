"""Running an aiohttp app: from a command (blocking, signals) or from tests and benchmarks
(started on a free port, stopped explicitly).

Handler cancellation is on: when a client disconnects, aiohttp cancels its handler, which is
how both services notice a client that left while its request is queued (nothing is being
written yet, so no write can fail).
"""

from __future__ import annotations

import logging
import socket

from aiohttp import web

logger = logging.getLogger(__name__)


def run(app: web.Application, host: str, port: int) -> int:
    """Serve until SIGINT/SIGTERM; in-flight requests get a few seconds to finish."""
    web.run_app(
        app,
        host=host,
        port=port,
        handler_cancellation=True,
        shutdown_timeout=5.0,
        access_log=None,
        print=lambda *a: logger.info("listening on http://%s:%d", host, port),
    )
    return 0


async def start(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> Server:
    """Start `app` in the running loop; port 0 picks a free port."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    site = web.SockSite(runner, sock)
    await site.start()
    return Server(runner, host, sock.getsockname()[1])


class Server:
    """A started app: its URL, and `stop()`."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self.runner = runner
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()
