"""The gateway (Envoy + the endpoint picker) end to end on loopback: OpenAI clients, streaming,
failures, limits, keys. Envoy relays every byte; the picker decides and keeps account."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

BODY = {"model": "m", "prompt": "Tell me about the sea.", "max_tokens": 32}


def client(gw: Any, api_key: str = "unused", **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=str(gw.make_url("/v1")), api_key=api_key, max_retries=0, **kw
    )


async def raw_post(
    gw: Any, data: bytes | None = None, path: str = "/v1/completions", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    payload = json.dumps(BODY).encode() if data is None else data
    async with (
        aiohttp.ClientSession() as s,
        s.post(gw.make_url(path), data=payload, headers=headers) as r,
    ):
        return r.status, dict(r.headers), await r.read()


async def test_openai_client_completions_and_chat(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(2)
    gw = await gateway(fakes, policy="round-robin")
    async with client(gw) as c:
        done = await c.completions.create(model="m", prompt="Hello", max_tokens=5)
        assert done.choices[0].text.startswith("hello from r")
        chat = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Hi there"}], max_tokens=7
        )
        assert chat.choices[0].message.content.startswith("hello from r")
        assert chat.usage is not None and chat.usage.completion_tokens == 3
        models = await c.models.list()
        assert [m.id for m in models.data] == ["meta-llama/Llama-2-7b-hf"]
    # Each sidecar got the length estimate (prior 256 capped by max_tokens).
    headers = sorted(h for f in fakes for h in f.output_tokens_headers)
    assert headers == ["5", "7"]


async def test_openai_client_streams_chunk_by_chunk(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(1, chunks=4, chunk_delay_s=0.05)
    gw = await gateway(fakes, policy="block")
    async with client(gw) as c:
        stream = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        loop = asyncio.get_running_loop()
        arrivals, texts = [], []
        async for chunk in stream:
            arrivals.append(loop.time())
            texts.append(chunk.choices[0].delta.content)
    assert texts == ["tok0 ", "tok1 ", "tok2 ", "tok3 "]
    # Passed through as they came, not buffered to the end.
    assert arrivals[-1] - arrivals[0] > 0.1


async def test_ignore_eos_makes_the_length_exact(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(1)
    gw = await gateway(fakes, prior_output_tokens=50)
    body = {**BODY, "max_tokens": 300, "ignore_eos": True}
    assert (await raw_post(gw, json.dumps(body).encode()))[0] == 200
    body = {**BODY, "max_tokens": 300}
    assert (await raw_post(gw, json.dumps(body).encode()))[0] == 200
    assert fakes[0].output_tokens_headers == ["300", "50"]


class WordCountEstimator:
    """A real (if simple) estimator: one output token per prompt word, times three."""

    name = "words"

    class Est:
        def __init__(self, n: int) -> None:
            self.p50_tokens = n

    def estimate(self, prompts: list[str]) -> list[Any]:
        return [self.Est(3 * len(p.split())) for p in prompts]


async def test_estimator_feeds_the_length_header(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(1)
    gw = await gateway(fakes, estimator=WordCountEstimator())
    body = {"model": "m", "messages": [{"role": "user", "content": "one two three four"}]}
    status, _, _ = await raw_post(gw, json.dumps(body).encode(), path="/v1/chat/completions")
    assert status == 200
    assert fakes[0].output_tokens_headers == ["12"]
    assert fakes[0].predict_bodies[0]["candidates"][0]["output_tokens"] == 12


async def test_shipped_estimator_plugs_in(sidecars: Any, gateway: Any) -> None:
    estimating = pytest.importorskip("block.estimator")
    try:
        est = estimating.LengthEstimator.load_default()
    except Exception as e:  # the artifact is built by the estimator's own workflow
        pytest.skip(f"no estimator artifact: {e}")
    fakes = await sidecars(1)
    gw = await gateway(fakes, estimator=est)
    body = {
        "model": "m",
        "prompt": "Write a long essay on the history of Rome.",
        "max_tokens": 4000,
    }
    assert (await raw_post(gw, json.dumps(body).encode()))[0] == 200
    [expected] = est.estimate([body["prompt"]])
    assert fakes[0].output_tokens_headers == [str(min(4000, expected.p50_tokens))]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "body is empty"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"prompt": "hi"}', "model: Field required"),
        (b'{"model": "m"}', "prompt: Field required"),
        (b'{"model": "m", "prompt": "hi", "max_tokens": 0}', "max_tokens: Input should be"),
        (b'{"model": "m", "prompt": "hi", "stream": "maybe"}', "stream: Input should be"),
        (b'{"model": "m", "prompt": [1, "a"]}', "prompt.1"),
    ],
)
async def test_malformed_bodies_are_clear_400s(
    sidecars: Any, gateway: Any, data: bytes, needle: str
) -> None:
    fakes = await sidecars(1)
    gw = await gateway(fakes)
    status, headers, body = await raw_post(gw, data)
    assert status == 400
    assert headers["Content-Type"].startswith("application/problem+json")
    problem = json.loads(body)
    assert needle in problem["detail"]
    assert problem["status"] == 400 and problem["request_id"]
    assert problem["error"]["message"] == problem["detail"]
    assert fakes[0].served == 0 and fakes[0].predicts == 0


async def test_bad_slo_header_and_chat_messages(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(1)
    gw = await gateway(fakes)
    status, _, body = await raw_post(gw, **{"x-block-slo-ttft-ms": "soon"})
    assert status == 400 and b"x-block-slo-ttft-ms" in body
    chat = json.dumps({"model": "m", "messages": [{"content": "no role"}]}).encode()
    status, _, body = await raw_post(gw, chat, path="/v1/chat/completions")
    assert status == 400 and b"messages.0.role: Field required" in body


async def test_oversized_body_is_413(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(1)
    gw = await gateway(fakes, max_body_bytes=1024)
    big = json.dumps({"model": "m", "prompt": "x" * 5000}).encode()
    status, headers, body = await raw_post(gw, big)
    assert status == 413
    assert headers["Content-Type"].startswith("application/problem+json")
    assert b"1024" in body  # Envoy's own 413, worded as the gateway's problem documents
    assert fakes[0].served == 0


async def test_unknown_paths_and_methods_are_problems(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(1)
    gw = await gateway(fakes)
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.make_url("/v1/completions")) as r:
            assert r.status == 405 and r.content_type == "application/problem+json"
        async with s.get(gw.make_url("/v2/nothing")) as r:
            assert r.status == 404 and r.content_type == "application/problem+json"


async def test_upstream_4xx_passes_through(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(2, generate_status=404)
    gw = await gateway(fakes)
    status, _, body = await raw_post(gw)
    assert status == 404 and b"failing" in body
    # The client's mistake is not retried elsewhere.
    assert sum(len(f.output_tokens_headers) for f in fakes) == 1


async def test_5xx_is_retried_elsewhere_and_backed_off(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(2)
    fakes[0].generate_status = 503
    fakes[0].e2e_s = 0.1  # block prefers it
    gw = await gateway(fakes, policy="block")
    status, headers, _ = await raw_post(gw)
    assert status == 200
    assert headers["x-gateway-destination-endpoint-served"] == fakes[1].replica_name
    metrics = await scrape(gw)
    assert metric(metrics, "block_scheduler_retries_total") == 1
    # Envoy retried down the picker's list; the picker saw another replica serve it.
    assert metric(metrics, "block_scheduler_upstream_errors_total", reason="retried") == 1
    # The failed replica backs off: the next request goes straight to the healthy one.
    status, headers, _ = await raw_post(gw)
    assert headers["x-gateway-destination-endpoint-served"] == fakes[1].replica_name
    assert len(fakes[0].output_tokens_headers) == 1


async def test_refused_connections_are_retried(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(2)
    await fakes[0].server.close()  # nothing listens there any more
    gw = await gateway(fakes, policy="round-robin")
    assert [(await raw_post(gw))[0] for _ in range(4)] == [200] * 4
    assert fakes[1].served == 4
    metrics = await scrape(gw)
    assert metric(metrics, "block_scheduler_upstream_errors_total", reason="retried") == 1
    assert metric(metrics, "block_scheduler_retries_total") == 1


async def test_all_replicas_failing_answers_the_last_replicas_error(
    sidecars: Any, gateway: Any
) -> None:
    fakes = await sidecars(2, generate_status=500)
    gw = await gateway(fakes, max_attempts=3)
    status, headers, body = await raw_post(gw)
    # Envoy tried the picker's choice, then its fallback, then gave up with the last answer.
    assert status == 500 and b"failing" in body
    assert sorted(len(f.output_tokens_headers) for f in fakes) == [1, 2]
    metrics = await scrape(gw)
    assert metric(metrics, "block_scheduler_upstream_errors_total") >= 1
    # Nothing reachable at all: Envoy's own 503, as a problem document.
    for f in fakes:
        assert f.server is not None
        await f.server.close()
    status, headers, body = await raw_post(gw)
    assert status == 503 and headers["Content-Type"] == "application/problem+json"
    assert "upstream connect error" in json.loads(body)["detail"]


async def test_all_replicas_429_is_429(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(2, generate_status=429)
    gw = await gateway(fakes)
    status, headers, _ = await raw_post(gw)
    assert status == 429 and "Retry-After" in headers


async def test_stream_cut_midway_is_an_error_not_a_hang(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(2, chunks=5, chunk_delay_s=0.05)
    fakes[0].cut_after_chunks = 2
    fakes[0].e2e_s = 0.1  # block prefers the one about to die
    gw = await gateway(fakes, policy="block")
    received = []
    async with client(gw) as c:
        stream = await c.completions.create(model="m", prompt="Hi", stream=True)
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                received.append(chunk.choices[0].text)
        assert received == ["tok0 ", "tok1 "]
    # Envoy counts what it relayed and lost; the picker released the request.
    stats = await gw.envoy.stats()
    assert stats["cluster.replicas.upstream_cx_destroy_remote_with_active_rq"] >= 1
    view = await replicas_view(gw)
    assert sum(r["inflight"] for r in view["replicas"]) == 0


async def test_sidecar_error_event_passes_through_once(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(1, chunks=4, error_after_chunks=1)
    gw = await gateway(fakes, policy="block")
    async with (
        aiohttp.ClientSession() as s,
        s.post(gw.make_url("/v1/completions"), json={**BODY, "stream": True}) as r,
    ):
        text = (await r.read()).decode()
    assert text.count('"error"') == 1 and "engine died" in text


async def test_client_leaving_mid_stream_is_quiet_and_frees_the_replica(
    sidecars: Any, gateway: Any, caplog: Any
) -> None:
    fakes = await sidecars(1, chunks=50, chunk_delay_s=0.02)
    gw = await gateway(fakes)
    caplog.set_level(logging.DEBUG, logger="block.scheduler")
    async with aiohttp.ClientSession() as s:
        resp = await s.post(gw.make_url("/v1/completions"), json={**BODY, "stream": True})
        assert (await resp.content.readany()).startswith(b"data: ")
        resp.close()  # the client leaves
    for _ in range(100):
        if metric(await scrape(gw), "block_scheduler_inflight_requests") == 0:
            break
        await asyncio.sleep(0.05)
    metrics = await scrape(gw)
    assert metric(metrics, "block_scheduler_inflight_requests") == 0
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # The upstream request was closed too: the replica stopped generating for nobody.
    await asyncio.sleep(0.2)
    assert fakes[0].chunks_sent < 50


async def test_stream_refused_before_its_headers_is_retried(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(2, chunks=3)
    fakes[0].generate_status = 503
    fakes[0].e2e_s = 0.1
    gw = await gateway(fakes, policy="block")
    async with client(gw) as c:
        stream = await c.completions.create(model="m", prompt="Hi", stream=True)
        assert [ch.choices[0].text async for ch in stream] == ["tok0 ", "tok1 ", "tok2 "]
    assert fakes[1].served == 1


async def test_slow_or_dead_predictors_change_only_latency(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(3, generate_delay_s=0.01)
    fakes[0].predict_delay_s = 0.3  # always misses the deadline
    fakes[1].predict_status = 500
    gw = await gateway(fakes, policy="block", predict_deadline_s=0.05, predictor_failures_to_skip=2)
    statuses = [(await raw_post(gw))[0] for _ in range(6)]
    await fakes[2].server.close()  # the last predictor (and its replica) dies mid-run
    statuses += [(await raw_post(gw))[0] for _ in range(6)]
    assert statuses == [200] * 12
    metrics = await scrape(gw)
    assert metric(metrics, "block_scheduler_predictor_timeouts_total") >= 1
    assert metric(metrics, "block_scheduler_predictor_errors_total") >= 1
    # With no prediction in time the load-based fallback decided.
    assert metric(metrics, "block_scheduler_fallbacks_total") >= 1
    # Failing predictors were skipped after two failures in a row (cooldown).
    assert fakes[1].predicts < 12


async def test_two_gateways_side_by_side(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(3, generate_delay_s=0.02)
    gws = [await gateway(fakes, policy="block"), await gateway(fakes, policy="least-requests")]
    results = await asyncio.gather(*(raw_post(gws[i % 2]) for i in range(20)))
    assert [r[0] for r in results] == [200] * 20
    assert sum(f.served for f in fakes) == 20
    for gw in gws:
        metrics = await scrape(gw)
        assert metric(metrics, "block_scheduler_requests_total", code="200") == 10


async def test_api_keys(sidecars: Any, gateway: Any, tmp_path: Path, caplog: Any) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# gateway keys\nsecret-one\n\nsecret-two\n")
    fakes = await sidecars(1)
    gw = await gateway(fakes, api_keys_file=keys)
    caplog.set_level(logging.DEBUG)
    status, headers, body = await raw_post(gw)
    assert status == 401 and "Bearer" in headers["WWW-Authenticate"]
    assert b"API key is required" in body
    status, _, body = await raw_post(gw, Authorization="Bearer not-a-key")
    assert status == 401 and b"not valid" in body and b"not-a-key" not in body
    assert (await raw_post(gw, Authorization="Bearer secret-two"))[0] == 200
    assert (await raw_post(gw, **{"x-api-key": "secret-one"}))[0] == 200
    async with client(gw, api_key="wrong") as c:
        with pytest.raises(openai.AuthenticationError):
            await c.models.list()
    async with client(gw, api_key="secret-one") as c:
        assert (await c.models.list()).data
    # Probes and scrapes need no key; the gateway's key never reaches the engine.
    async with aiohttp.ClientSession() as s, s.get(gw.make_url("/healthz")) as r:
        assert r.status == 200
    assert fakes[0].auth_headers == [None, None]
    assert "secret-" not in caplog.text and "not-a-key" not in caplog.text


async def test_replicas_health_and_metrics_endpoints(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(2)
    gw = await gateway(fakes, policy="block")
    assert (await raw_post(gw))[0] == 200
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.make_url("/v1/replicas")) as r:
            view = await r.json()
        async with s.get(gw.make_url("/healthz")) as r:
            health = await r.json()
    assert view["policy"] == "block" and view["fallback_policy"] == "least-requests"
    assert view["length_source"] == "prior"
    assert {x["name"] for x in view["replicas"]} == {f.replica_name for f in fakes}
    assert all(x["load"]["kv_blocks_total"] == 1000 for x in view["replicas"])
    assert sum(x["dispatched"] for x in view["replicas"]) == 1
    assert health == {"status": "ok", "replicas": 2, "routable": 2}
    metrics = await scrape(gw)
    assert metric(metrics, "block_scheduler_decisions_total", policy="block") == 1
    assert metric(metrics, "block_scheduler_decision_seconds_count") == 1
    assert metric(metrics, "block_scheduler_e2e_seconds_count") == 1
    assert metric(metrics, "block_scheduler_replicas", state="routable") == 2
    assert all(name.startswith("block_scheduler_") for name in metric_names(metrics))


async def test_readiness_probe_takes_replicas_out_and_back(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(2)
    fakes[0].ready = False
    gw = await gateway(fakes, policy="round-robin", health_interval_s=0.05)
    await asyncio.sleep(0.2)
    seen = collections.Counter(
        [(await raw_post(gw))[1]["x-gateway-destination-endpoint-served"] for _ in range(4)]
    )
    assert seen == {fakes[1].replica_name: 4}
    fakes[0].ready = True
    await asyncio.sleep(0.2)
    seen = collections.Counter(
        [(await raw_post(gw))[1]["x-gateway-destination-endpoint-served"] for _ in range(4)]
    )
    assert seen[fakes[0].replica_name] == 2


async def test_no_replica_ready_is_503(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(1, ready=False)
    gw = await gateway(fakes, health_interval_s=0.05)
    await asyncio.sleep(0.2)
    status, _, body = await raw_post(gw)
    assert status == 503 and b"no replica is ready" in body


async def replicas_view(gw: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(gw.make_url("/v1/replicas")) as r:
        view: dict[str, Any] = await r.json()
        return view


async def scrape(gw: Any) -> str:
    async with aiohttp.ClientSession() as s, s.get(gw.make_url("/metrics")) as r:
        return await r.text()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample = head.split("{")[0]
        if sample != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def metric_names(text: str) -> set[str]:
    return {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE")}


async def test_inflight_gauge_counts_requests_being_proxied(sidecars: Any, gateway: Any) -> None:
    fakes = await sidecars(1, generate_delay_s=0.5)
    gw = await gateway(fakes, policy="round-robin")
    slow = asyncio.ensure_future(raw_post(gw))
    await asyncio.sleep(0.2)
    during = await scrape(gw)
    assert (await slow)[0] == 200
    name = fakes[0].replica_name
    for _ in range(100):  # the picker's stream for it closes just after the answer
        after = await scrape(gw)
        if metric(after, "block_scheduler_inflight_requests", replica=name) == 0:
            break
        await asyncio.sleep(0.02)
    assert metric(during, "block_scheduler_inflight_requests", replica=name) == 1
    assert metric(after, "block_scheduler_inflight_requests", replica=name) == 0


async def test_a_replica_that_never_answers_is_left_after_the_first_byte_limit(
    sidecars: Any, gateway: Any
) -> None:
    fakes = await sidecars(2)
    fakes[0].generate_delay_s = 30.0  # takes requests, answers nothing
    gw = await gateway(
        fakes, policy="round-robin", first_byte_timeout_s=0.5, first_byte_per_token_s=0.0
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = [await raw_post(gw) for _ in range(4)]
    assert [r[0] for r in results] == [200] * 4
    assert {r[1]["x-gateway-destination-endpoint-served"] for r in results} == {
        fakes[1].replica_name
    }
    assert loop.time() - started < 20  # not the hung replica's 30 s (nor the 600 s read limit)
    metrics = await scrape(gw)
    assert metric(metrics, "block_scheduler_upstream_errors_total", reason="retried") >= 1
    view = {r["name"]: r for r in (await replicas_view(gw))["replicas"]}
    assert view[fakes[0].replica_name]["failures"] >= 1


async def test_slow_clients_are_cut_at_the_header_and_request_deadlines(
    sidecars: Any, gateway: Any
) -> None:
    fakes = await sidecars(1)
    gw = await gateway(fakes, header_timeout_s=0.5, request_timeout_s=1.0)
    # A byte now and then never completes the headers.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    for _ in range(3):
        await asyncio.sleep(0.3)
        writer.write(b"X")
    answer = await asyncio.wait_for(reader.readline(), 10)  # Envoy then closes (or resets)
    assert answer.startswith(b"HTTP/1.1 408")
    writer.close()
    # Headers in time, a body that never finishes.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    answer = await asyncio.wait_for(reader.readline(), 10)  # Envoy then closes (or resets)
    assert answer.startswith(b"HTTP/1.1 408")
    writer.close()
    stats = await gw.envoy.stats()
    assert (
        stats["http.block.downstream_rq_header_timeout"] + stats["http.block.downstream_rq_timeout"]
        >= 2
    )
    assert fakes[0].served == 0
