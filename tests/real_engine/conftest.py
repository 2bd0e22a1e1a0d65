"""The real-engine tier: a stock vLLM (CPU build, `tools/real-engine/`) on loopback, one per
test session, with Block's sidecar in front of it in-process.

The engine runs on core 0 (`REAL_ENGINE_CPUS`), so the sidecar and the test's clients keep the
other core. It serves `tiny-llama3`, a random-weight Llama-3 (`--load-format dummy`) with vLLM's
CPU defaults: 128 sequences, a 2048-token budget, chunked prefill, prefix caching, blocks of 128.
Built by `make real-engine` (`make test` builds it first); without it these tests fail and say so.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from block.predictor.lengths import LengthDistribution
from block.predictor.service import SIDECAR, Sidecar, create_app
from block.predictor.serving import Server, start
from block.predictor.settings import PredictorSettings
from block.predictor.tokens import Tokens
from block.simulator.latency import LatencyModel

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "real-engine"
MODEL_DIR = CACHE / "model"
SERVED = "tiny-llama3"
START_TIMEOUT_S = 300.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class RealEngine:
    url: str
    log: Path


@pytest.fixture(scope="session")
def real_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealEngine]:
    if not (CACHE / "venv" / ".real-engine-stamp").is_file():
        pytest.fail(
            "the real vLLM engine is not built: run `make real-engine` "
            "(tools/real-engine/build.sh); `make test` does it first"
        )
    port = _free_port()
    log = tmp_path_factory.mktemp("real-engine") / "vllm.log"
    env = {**os.environ, "REAL_ENGINE_CPUS": os.environ.get("REAL_ENGINE_CPUS", "0")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(REPO / "tools" / "real-engine" / "serve.sh"), str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"vLLM exited ({proc.returncode}): {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"vLLM not up in {START_TIMEOUT_S:.0f} s: {log.read_text()[-3000:]}"
                )
            time.sleep(1.0)
        yield RealEngine(url, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@dataclass(frozen=True)
class Shared:
    tokens: Tokens
    lengths: LengthDistribution
    latency: LatencyModel


@pytest.fixture(scope="session")
def shared() -> Shared:
    # The sidecar's profile is deliberately not this engine's (an A100 running Llama-2-7B): the
    # tier shows the sidecar working beside an engine it was not profiled on.
    return Shared(
        Tokens.llama3(),
        LengthDistribution.sharegpt(),
        LatencyModel.load("a100", "meta-llama/Llama-2-7b-hf"),
    )


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
async def sidecar(
    real_engine: RealEngine, shared: Shared
) -> AsyncIterator[Callable[..., Awaitable[Side]]]:
    servers: list[Server] = []

    async def make(**kw: Any) -> Side:
        kw.setdefault("reconcile_interval_s", 0.25)
        kw.setdefault("max_num_seqs", 128)  # vLLM's CPU default (it does not report it)
        settings = PredictorSettings(
            port=0, engine_url=real_engine.url, served_model_name=SERVED, **kw
        )
        app = create_app(settings, shared.tokens, shared.lengths, shared.latency)
        server = await start(app)
        servers.append(server)
        return Side(server)

    yield make
    for s in servers:
        await s.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)
