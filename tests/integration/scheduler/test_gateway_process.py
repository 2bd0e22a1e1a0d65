"""`block gateway` and `block epp` as processes: they start (Envoy from the wheel, the shipped
length estimator), serve through real sidecars, and stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import openai
from grpc_health.v1 import health_pb2, health_pb2_grpc

MODEL = "meta-llama/Llama-2-7b-hf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_block_gateway_command(cluster: Any, tmp_path: Path) -> None:
    replicas = await cluster(2)
    port = free_port()
    keys = tmp_path / "keys"
    keys.write_text("k-123\n")
    admin = tmp_path / "admin-token"
    admin.write_text("adm-456\n")
    log = tmp_path / "gateway.log"
    exe = Path(sys.executable).parent / "block"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(exe), "gateway", "--port", str(port), "--policy", "block",
             "--grpc-port", str(free_port()), "--admin-port", str(free_port()),
             "--envoy-admin-port", str(free_port()), "--envoy-concurrency", "1",
             "--replicas", ",".join(r.url for r in replicas), "--api-keys-file", str(keys),
             "--admin-token-file", str(admin),
             "--length-source", "estimator", "--predict-deadline-ms", "250"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            for _ in range(600):
                assert proc.poll() is None, log.read_text()
                try:
                    async with s.get(url + "/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            async with s.get(url + "/v1/replicas", headers={"x-api-key": "k-123"}) as r:
                assert r.status == 401  # an inference key does not open the admin API
            auth = {"Authorization": "Bearer adm-456"}
            async with s.get(url + "/v1/replicas", headers=auth) as r:
                view = await r.json()
        assert view["length_source"].startswith("estimator:")
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="k-123") as c:
            done = await c.completions.create(
                model=MODEL, prompt="Hello there.", max_tokens=3, extra_body={"ignore_eos": True}
            )
        assert done.usage is not None and done.usage.completion_tokens == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, 30)
    text = log.read_text()
    assert rc == 0, text
    assert "k-123" not in text and "adm-456" not in text and "Traceback" not in text
    assert '"path":"/v1/completions"' in text  # Envoy's access log, one JSON line a request


async def test_block_epp_command(cluster: Any, tmp_path: Path) -> None:
    replicas = await cluster(1)
    grpc_port, admin_port = free_port(), free_port()
    log = tmp_path / "epp.log"
    exe = Path(sys.executable).parent / "block"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(exe), "epp", "--grpc-port", str(grpc_port), "--admin-port", str(admin_port),
             "--policy", "round-robin", "--replicas", replicas[0].url],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="readiness")
            for _ in range(300):
                assert proc.poll() is None, log.read_text()
                try:
                    answer = await health.Check(request, timeout=1)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{admin_port}/v1/replicas") as r,
        ):
            assert [x["url"] for x in (await r.json())["replicas"]] == [replicas[0].url]
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, 30)
    text = log.read_text()
    assert rc == 0 and "Traceback" not in text, text
