"""A Block cluster on loopback as child processes: engine twins, predictor sidecars, a gateway.

Each process is `block engine`, `block predictor` or `block gateway` from the running
installation, on a free port, logging to `<log_dir>/<name>.log`. Start-up waits for each to
answer its health endpoint; shutdown sends SIGTERM, waits, then SIGKILL, and always runs
(context manager), so no process outlives the experiment.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from block.errors import BlockError

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def block_binary() -> str:
    """The `block` script next to the running interpreter (the same installation)."""
    path = Path(sys.executable).parent / "block"
    if not path.exists():
        raise BlockError(f"cannot find the block command at {path}")
    return str(path)


@dataclass
class Proc:
    name: str
    url: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]


@dataclass(frozen=True)
class EngineSpec:
    """Engine settings shared by the twins and their sidecars (they must agree)."""

    gpu: str = "a100"
    model: str = "meta-llama/Llama-2-7b-hf"
    scheduler: str = "sarathi"
    chunk_tokens: int = 512
    max_num_seqs: int = 48
    bias: float = 1.0  # engine step time vs the profile the sidecar assumes
    extra: tuple[str, ...] = ()

    def args(self) -> list[str]:
        return [
            "--gpu", self.gpu, "--model", self.model, "--scheduler", self.scheduler,
            "--chunk-size", str(self.chunk_tokens), "--max-num-seqs", str(self.max_num_seqs),
        ]  # fmt: skip


@dataclass
class LocalCluster:
    """Start with `up()`, route through `gateway(policy)`, stop with `down()` (or `with`)."""

    replicas: int
    engine: EngineSpec
    log_dir: Path
    gateway_args: Sequence[str] = ()
    procs: list[Proc] = field(default_factory=list)
    sidecars: list[str] = field(default_factory=list)

    def _spawn(self, name: str, argv: list[str], port: int, health: str) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        popen = subprocess.Popen(
            [block_binary(), *argv, "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        proc = Proc(name, f"http://127.0.0.1:{port}", popen, log)
        self.procs.append(proc)
        self._wait_healthy(proc, health)
        return proc

    def _wait_healthy(self, proc: Proc, path: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise BlockError(
                    f"{proc.name} exited with {proc.popen.returncode}; see "
                    f"{self.log_dir / (proc.name + '.log')}"
                )
            try:
                with urllib.request.urlopen(proc.url + path, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise BlockError(f"{proc.name} not healthy at {proc.url}{path} in {START_TIMEOUT_S} s")

    def up(self) -> None:
        """Start the engines and their sidecars (the gateway starts per policy)."""
        eng = self.engine
        for i in range(self.replicas):
            e = self._spawn(
                f"engine-{i}",
                ["engine", *eng.args(), "--bias", str(eng.bias), "--seed", str(i), *eng.extra],
                free_port(),
                "/v1/models",
            )
            s = self._spawn(
                f"predictor-{i}",
                ["predictor", *eng.args(), "--engine-url", e.url],
                free_port(),
                "/readyz",
            )
            self.sidecars.append(s.url)

    @contextlib.contextmanager
    def gateway(self, policy: str) -> Iterator[str]:
        """A gateway (`block gateway`: Envoy and the endpoint picker) with `policy` over every
        sidecar; stopped on exit."""
        argv = ["gateway", "--policy", policy, "--replicas", ",".join(self.sidecars),
                "--grpc-port", str(free_port()), "--admin-port", str(free_port()),
                "--envoy-admin-port", str(free_port()), "--envoy-concurrency", "1",
                *self.gateway_args]  # fmt: skip
        proc = self._spawn(f"gateway-{policy}", argv, free_port(), "/healthz")
        try:
            yield proc.url
        finally:
            self._stop(proc)
            self.procs.remove(proc)

    def _stop(self, proc: Proc) -> None:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM; killing it", proc.name)
                proc.popen.kill()
                proc.popen.wait(STOP_TIMEOUT_S)
        proc.log.close()

    def down(self) -> None:
        for proc in reversed(self.procs):
            self._stop(proc)
        self.procs.clear()
        self.sidecars.clear()

    def __enter__(self) -> LocalCluster:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()
