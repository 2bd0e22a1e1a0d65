"""Run the endpoint picker: Envoy's ext_proc gRPC service and the HTTP admin app, one loop.

`start` serves in the running loop (tests, `block gateway`); `run` serves until SIGINT or
SIGTERM (`block epp`). The admin app is the gateway app without its own OpenAI routes
(`create_app`): metrics, `/v1/replicas`, the autoscaling API and
`/healthz`, on the same `ReplicaSet` and router as the picker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from dataclasses import dataclass

import grpc
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from block.scheduler.epp import EndpointPicker
from block.scheduler.epp_protocol import SERVICE_NAME
from block.scheduler.service import SETTINGS

logger = logging.getLogger(__name__)
# Health service names the endpoint-picker protocol defines, and the overall status ("").
HEALTH_SERVICES = ("", "liveness", "readiness", SERVICE_NAME)
# gRPC headroom over the largest request body the picker reads (the message's other fields).
MESSAGE_HEADROOM = 1 << 20


@dataclass
class PickerServer:
    """A started picker: its ports, and `close()`."""

    runner: web.AppRunner
    server: grpc.aio.Server
    health: HealthServicer
    host: str
    grpc_port: int
    admin_port: int

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    async def close(self, grace_s: float = 1.0) -> None:
        """Say NOT_SERVING, let streams in progress finish (bounded), then clean up."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        await self.runner.cleanup()


async def start(
    app: web.Application, host: str = "127.0.0.1", grpc_port: int = 0, admin_port: int = 0
) -> PickerServer:
    """Serve the picker for `app` (built by `create_app`)."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()  # discovery, predictor client, router: the app's cleanup_ctx
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, admin_port), family=family, backlog=128)
        admin_bound = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        settings = app[SETTINGS]
        limit = settings.max_body_bytes + MESSAGE_HEADROOM
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Two pickers on one port would split Envoy's streams between them silently.
                ("grpc.so_reuseport", 0),
            ]
        )
        ext_proc_grpc.add_ExternalProcessorServicer_to_server(EndpointPicker(app), server)
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        grpc_bound = server.add_insecure_port(f"{host}:{grpc_port}")
        if grpc_bound == 0:
            raise OSError(f"cannot listen on {host}:{grpc_port} for gRPC")
        await server.start()
    except BaseException:
        await runner.cleanup()
        raise
    # Discovery has run once (the app's start-up awaits it): the picker knows its pool.
    for name in HEALTH_SERVICES:
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return PickerServer(runner, server, health, host, grpc_bound, admin_bound)


async def start_admin(
    app: web.Application, host: str = "127.0.0.1", admin_port: int = 0
) -> tuple[web.AppRunner, int]:
    """The admin app alone on HOST:ADMIN_PORT, its start-up run (discovery, predictor
    client, router): its runner and the port bound. For a picker served by another front
    (`epp_native`)."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, admin_port), family=family, backlog=128)
        bound: int = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, bound


def run(app: web.Application, host: str, grpc_port: int, admin_port: int) -> int:
    """Serve until SIGINT or SIGTERM (`block epp`)."""

    async def main() -> None:
        from block.scheduler import epp_native  # it builds on this module

        front = app[SETTINGS].picker_front
        picker = await epp_native.start_picker(app, host, grpc_port, admin_port, front)
        logger.info(
            "endpoint picker up: ext_proc gRPC on %s, admin on %s",
            picker.grpc_target,
            picker.admin_url,
        )
        await wait_for_signal()
        logger.info("shutting down")
        await picker.close(grace_s=5.0)

    asyncio.run(main())
    return 0


async def wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
