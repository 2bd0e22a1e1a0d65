"""Prediction latency of the predictor sidecar: in-process and over HTTP on loopback.

States: the sidecar's live twin of a vLLM-v1 replica of Llama-2-7B on A100 (token budget 512,
`--max-num-seqs` = the running count, so that later arrivals wait) holding 24 or 48 running
requests with 0, 16 or 64 more waiting, ShareGPT sizes; the same construction as
bench/predict_latency.py, but fed through the twin's own `arrive` path. The twin's clock is
frozen, so every call sees the same state.

For each state and ShareGPT-sized candidates, it measures:
- core: `predict_one_more` on the twin's replica (the simulator alone, the baseline);
- in-process: `LiveTwin.predict` (settle the twin, validate, predict): what /v1/predict runs;
- HTTP: `POST /v1/predict` round trips to a sidecar process on loopback, from a minimal
  blocking keep-alive client (so the client adds little), plus the server's own `compute_s`.

    .venv/bin/python bench/predictor_latency.py [--repeats 2000] [--json out.json]

Targets (issue 3): p99 under 1 ms in-process and under 2 ms over HTTP.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from block.predictor.lengths import LengthDistribution
from block.predictor.twin import LiveTwin
from block.simulator import workloads
from block.simulator.latency import LatencyModel
from block.simulator.prediction import predict_one_more
from block.simulator.replica import ReplicaConfig

MODEL = "meta-llama/Llama-2-7b-hf"
STATES = [(r, w) for r in (24, 48) for w in (0, 16, 64)]


class FrozenClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def populate(twin: LiveTwin, clock: FrozenClock, pool: np.ndarray, running: int, waiting: int,
             seed: int) -> None:  # fmt: skip
    """Arrivals 50 ms apart until `running` run, then `waiting` more at once (as
    bench/predict_latency.build_state does on a bare replica)."""
    rng = random.Random(seed)

    def draw() -> tuple[int, int]:
        p, o = pool[rng.randrange(len(pool))]
        return int(min(p, 2048)), int(max(min(o, 1024), 64))

    r = twin.replica
    while r.num_running < running:
        p, o = draw()
        twin.arrive(p, o, o, exact=True, streaming=False, predict=False)
        clock.t += 0.05
        twin.settle()
    for _ in range(max(0, waiting - r.num_waiting)):
        p, o = draw()
        twin.arrive(p, o, o, exact=True, streaming=False, predict=False)


def candidates(pool: np.ndarray, n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p, o = pool[rng.randrange(len(pool))]
        out.append((int(min(p, 2048)), int(max(min(o, 1024), 1))))
    return out


def pct(xs: list[float]) -> tuple[float, float]:
    a = np.array(xs) * 1e6
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


# ---------------------------------------------------------------------------------- server
def serve(running: int, waiting: int, port: int) -> None:
    """A sidecar whose twin holds the state, frozen; no engine behind it."""
    from aiohttp import web

    from block.predictor.service import SIDECAR, create_app
    from block.predictor.settings import PredictorSettings

    clock = FrozenClock()
    settings = PredictorSettings(
        port=port,
        engine_url="http://127.0.0.1:9",
        max_num_batched_tokens=512,
        max_num_seqs=running,
        reconcile_interval_s=3600,
        log_level="WARNING",
    )
    app = create_app(settings, clock=clock)

    async def fill(app: web.Application) -> None:
        twin = app[SIDECAR].twin
        populate(twin, clock, workloads.sharegpt_lengths(), running, waiting,
                 seed=running * 100 + waiting)  # fmt: skip
        gc.collect()
        gc.freeze()

    app.on_startup.append(fill)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class RawClient:
    """Blocking HTTP/1.1 keep-alive client: a request is one send and a few recvs."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def post(self, path: str, body: bytes) -> bytes:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        header, self.buf = self.buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in header.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(self.buf) < length:
            self.buf += self.sock.recv(65536)
        out, self.buf = self.buf[:length], self.buf[length:]
        if not header.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{header.splitlines()[0]!r}: {out[:200]!r}")
        return out


def http_bench(running: int, waiting: int, cands: list[tuple[int, int]], repeats: int
               ) -> dict[str, Any]:  # fmt: skip
    port = _free_port()
    exe = Path(sys.executable)
    proc = subprocess.Popen(
        [str(exe), __file__, "--serve", str(running), str(waiting), "--port", str(port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        client = _connect(port, proc)
        state = json.loads(client.post("/v1/predict", b'{"prompt_tokens":1,"output_tokens":1}'))
        load = state["load"]
        bodies = [json.dumps({"prompt_tokens": p, "output_tokens": o}).encode() for p, o in cands]
        for b in bodies[:200]:  # warm up
            client.post("/v1/predict", b)
        rtt, compute = [], []
        for i in range(repeats):
            b = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            out = client.post("/v1/predict", b)
            rtt.append(time.perf_counter() - t0)
            compute.append(json.loads(out)["compute_s"])
        return {"load": load, "rtt": pct(rtt), "server_compute": pct(compute)}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _connect(port: int, proc: subprocess.Popen[bytes]) -> RawClient:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError("the sidecar exited")
        try:
            client = RawClient(port)
            client.post("/v1/predict", b'{"prompt_tokens":1,"output_tokens":1}')
            return client
        except (OSError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2000)
    ap.add_argument("--json", default=None)
    ap.add_argument("--serve", nargs=2, type=int, metavar=("RUNNING", "WAITING"))
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--no-http", action="store_true", help="in-process numbers only")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], args.port)
        return
    lat = LatencyModel.load("a100", MODEL)
    pool = workloads.sharegpt_lengths()
    lengths = LengthDistribution.sharegpt()
    cands = candidates(pool, 500, seed=7)
    rows = []
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; microseconds")
    print(f"{'state':>16} | {'core p50/p99':>15} | {'in-process p50/p99':>18} | "
          f"{'(CPU time)':>15} | {'HTTP p50/p99':>15} | {'server compute':>15}")  # fmt: skip
    for running, waiting in STATES:
        clock = FrozenClock()
        twin = LiveTwin(lat, ReplicaConfig("vllm", 512, running), lengths, clock=clock)
        populate(twin, clock, pool, running, waiting, seed=running * 100 + waiting)
        gc.collect()
        gc.freeze()
        core, inproc, inproc_cpu = [], [], []
        replica, now = twin.replica, twin.now()
        for i in range(args.repeats):
            p, o = cands[i % len(cands)]
            t0 = time.perf_counter()
            predict_one_more(replica, p, o, now)
            t1, c1 = time.perf_counter(), time.thread_time()
            twin.predict([(p, o)])
            c2, t2 = time.thread_time(), time.perf_counter()
            core.append(t1 - t0)
            inproc.append(t2 - t1)
            inproc_cpu.append(c2 - c1)
        row: dict[str, Any] = {
            "running": replica.num_running,
            "waiting": replica.num_waiting,
            "core_us": pct(core),
            "in_process_us": pct(inproc),
            "in_process_cpu_us": pct(inproc_cpu),
        }
        if not args.no_http:
            h = http_bench(running, waiting, cands, args.repeats)
            assert (h["load"]["num_running"], h["load"]["num_waiting"]) == (
                row["running"], row["waiting"]
            ), h["load"]  # fmt: skip
            row["http_us"], row["server_compute_us"] = h["rtt"], h["server_compute"]
        rows.append(row)
        http = row.get("http_us", (float("nan"),) * 2)
        comp = row.get("server_compute_us", (float("nan"),) * 2)
        label = f"{row['running']} run/{row['waiting']} wait"
        cpu = row["in_process_cpu_us"]
        print(f"{label:>16} | {row['core_us'][0]:7.0f}/{row['core_us'][1]:7.0f} | "
              f"{row['in_process_us'][0]:8.0f}/{row['in_process_us'][1]:8.0f}  | "
              f"{cpu[0]:7.0f}/{cpu[1]:7.0f} | "
              f"{http[0]:7.0f}/{http[1]:7.0f} | {comp[0]:7.0f}/{comp[1]:7.0f}")  # fmt: skip
        gc.unfreeze()
    print("targets: in-process p99 < 1000 us, HTTP p99 < 2000 us")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
