"""`block bench`'s load generator against real servers on loopback: a scripted SSE server
started in the test (known timings) and the engine twin (`block engine`) as a process."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from block import cli
from block.experiments import loadgen, plans

TOKEN_GAP_S = 0.02
FIRST_TOKEN_S = 0.1


async def _completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body["prompt"] == "fail":
        return web.json_response({"error": {"message": "nope"}}, status=500)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await asyncio.sleep(FIRST_TOKEN_S)
    n = int(body["max_tokens"])
    for i in range(n):
        if i:
            await asyncio.sleep(TOKEN_GAP_S)
        chunk = {"choices": [{"index": 0, "text": f" t{i}"}]}
        await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n}}
    await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
    return resp


@pytest.fixture
async def sse_url(aiohttp_server) -> str:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_post("/v1/completions", _completions)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


def _plan(
    n: int, gap_s: float, max_tokens: int = 5, prompt: str = "hi"
) -> list[plans.PlannedRequest]:
    return [plans.PlannedRequest(i, i * gap_s, prompt, 2, max_tokens) for i in range(n)]


async def test_bench_times_first_token_gaps_and_end(sse_url: str) -> None:
    results, _, stopped = await loadgen.run_plan(loadgen.BenchConfig(sse_url), _plan(3, 0.01))
    assert not stopped and len(results) == 3
    for r in results:
        assert r.ok and r.output_tokens == 5 and len(r.itl_s) == 4
        assert FIRST_TOKEN_S <= r.ttft_s < r.e2e_s
        assert all(g >= TOKEN_GAP_S * 0.8 for g in r.itl_s)
        assert r.e2e_s >= FIRST_TOKEN_S + 4 * TOKEN_GAP_S
    summary = loadgen.summarize(results, 1.0)
    assert summary["completed"] == 3 and summary["failed"] == 0 and summary["queue"] is None
    assert summary["ttft"]["p50"] >= FIRST_TOKEN_S


async def test_bench_is_open_loop(sse_url: str) -> None:
    # Each request takes >= 0.5 s; 20 requests planned 10 ms apart all leave before any ends.
    plan = _plan(20, 0.01, max_tokens=21)
    results, _, _ = await loadgen.run_plan(loadgen.BenchConfig(sse_url), plan)
    assert max(r.send_s for r in results) < min(r.send_s + r.e2e_s for r in results)


async def test_bench_counts_server_errors_as_failed(sse_url: str) -> None:
    plan = [*_plan(2, 0.0), plans.PlannedRequest(2, 0.0, "fail", 2, 5)]
    results, _, _ = await loadgen.run_plan(loadgen.BenchConfig(sse_url), plan)
    bad = [r for r in results if not r.ok]
    assert len(bad) == 1 and bad[0].status == 500 and "nope" in bad[0].error
    assert loadgen.summarize(results, 1.0)["failed"] == 1


async def test_bench_stop_ends_sending_and_keeps_what_finished(sse_url: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.35, stop.set)
    plan = _plan(50, 0.1, max_tokens=2)
    cfg = loadgen.BenchConfig(sse_url, grace_s=2)
    results, _, stopped = await loadgen.run_plan(cfg, plan, stop)
    assert stopped
    assert 2 <= len(results) <= 6
    assert all(r.ok for r in results)


async def test_bench_reports_a_dead_endpoint_as_failed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results, _, _ = await loadgen.run_plan(
        loadgen.BenchConfig(f"http://127.0.0.1:{port}"), _plan(1, 0)
    )
    assert not results[0].ok and "Connect" in results[0].error


def test_synthetic_prompts_have_the_planned_token_count() -> None:
    from block.simulator.workloads import llama3_tokenizer

    tok = llama3_tokenizer()
    for n in (1, 17, 300):
        assert len(tok.encode(plans.synthetic_prompt(n)).ids) == max(1, n - 1)  # type: ignore[attr-defined]


def test_trace_plan_keeps_its_timestamps_scaled() -> None:
    p = plans.plan("azure-conv", 50, None, seed=1, time_scale=10.0)
    assert p[0].send_s == 0.0
    assert all(b.send_s >= a.send_s for a, b in itertools.pairwise(p))
    # The Azure conversation trace runs at about 5.4 req/s; ten times faster is about 54.
    assert 10 < (len(p) - 1) / p[-1].send_s < 300


@pytest.fixture(scope="module")
def engine_url() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    block = str(Path(sys.executable).parent / "block")
    proc = subprocess.Popen([block, "engine", "--port", str(port), "--log-level", "WARNING"])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert proc.poll() is None, "block engine exited"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_bench_cli_against_the_engine_twin(engine_url: str, tmp_path: Path) -> None:
    rc = cli.main(["bench", "--url", engine_url, "--workload", "azure-conv", "--qps", "20",
                   "--requests", "15", "--max-tokens-cap", "24", "--out", str(tmp_path),
                   "--quiet"])  # fmt: skip
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["completed"] == 15 and summary["failed"] == 0
    assert set(summary) >= {"ttft", "tpot", "e2e", "queue", "throughput_rps", "completed"}
    rows = (tmp_path / "records.csv").read_text().splitlines()
    assert len(rows) == 16
    assert 0 < summary["ttft"]["p50"] < summary["e2e"]["p50"]


def test_bench_cli_rejects_a_bad_url(tmp_path: Path) -> None:
    assert cli.main(["bench", "--url", "localhost:1", "--qps", "1", "--out", str(tmp_path)]) == 2


async def test_engine_twin_counts_every_token(engine_url: str) -> None:
    plan = _plan(2, 0.0, max_tokens=7)
    results, _, _ = await loadgen.run_plan(loadgen.BenchConfig(engine_url), plan)
    assert [r.output_tokens for r in results] == [7, 7]
    assert all(len(r.itl_s) >= 1 for r in results)
    async with aiohttp.ClientSession() as s, s.get(engine_url + "/metrics") as m:
        assert m.status == 200
