"""Loopback machinery of the gateway benches: fake replicas in nginx, wrk runs, CPU from /proc.

Used by bench/envoy_epp.py (imported as a sibling module: the
script's folder is on sys.path when a bench runs). The replicas are one nginx process serving
8 ports with fixed answers, so the replica side costs next to nothing and what a run measures
is the proxy in front of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPLICAS = 8
BODY = '{"model":"m","prompt":"Tell me about the sea, in a few words.","max_tokens":16}'
COMPLETION = json.dumps(
    {
        "id": "cmpl-bench",
        "object": "text_completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "text": " The sea is wide.", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
)
PREDICTION = json.dumps(
    {
        "queue_s": 0.0,
        "ttft_s": 0.02,
        "e2e_s": 0.4,
        "predictions": [{"queue_s": 0.0, "ttft_s": 0.02, "e2e_s": 0.4}],
        "load": {
            "num_running": 4,
            "num_waiting": 0,
            "kv_blocks_used": 100,
            "kv_blocks_total": 2000,
            "block_size": 16,
            "waiting_prefill_tokens": 0,
        },
        "state_age_s": 0.01,
        "model": "m",
        "compute_s": 0.0002,
    }
)
WRK_LUA = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%%d,"duration_us":%%d,"errors":%%d,"non2xx":%%d,' ..
    '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"mean_us":%%.1f}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None
    )


def missing_tools() -> list[str]:
    """What the loopback benches need and this machine lacks (Debian package names)."""
    missing = [
        pkg for tool, pkg in (("wrk", "wrk"), ("taskset", "util-linux")) if not shutil.which(tool)
    ]
    if nginx_binary() is None:
        missing.append("nginx-light (or nginx)")
    return missing


def nginx_conf(tmp: Path, servers: str, name: str) -> Path:
    conf = tmp / f"{name}.conf"
    conf.write_text(
        f"""
daemon off;
worker_processes 1;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  keepalive_requests 1000000;
  # Idle keep-alive connections stay open for the whole run: the fan-out gateways leave
  # hundreds behind after their throughput runs, and nginx closing them 75 s later (its
  # default) would hand core 0 teardown work during some other target's latency run.
  keepalive_timeout 3600s;
  {servers}
}}
"""
    )
    return conf


def replica_servers(ports: list[int], completions: str | None = None, extra: str = "") -> str:
    """The 8 fake replicas. `completions`: what `location = /v1/completions` does (default:
    answer the fixed completion body); `extra`: more of each server block (locations)."""
    answer = completions or f"return 200 '{COMPLETION}';"
    out = []
    for p in ports:
        out.append(
            f"""
  server {{
    listen 127.0.0.1:{p};
    default_type application/json;
    location = /v1/completions {{ {answer} }}
    location = /v1/predict {{ return 200 '{PREDICTION}'; }}
    location = /readyz {{ return 200 '{{"ready":true}}'; }}{extra}
  }}"""
        )
    return "\n".join(out)


def proxy_server(port: int, upstreams: list[int]) -> str:
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in upstreams)
    return f"""
  upstream replicas {{
{servers}
    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}"""


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_http(url: str, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"{url} did not come up")
        time.sleep(0.1)


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of these processes so far, all their threads (from /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def pin(pid: int, cores: set[int]) -> None:
    """Move every thread of a process to `cores` (sched_setaffinity on a pid moves one)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cores)


def wrk(
    url: str,
    lua: Path,
    connections: int,
    seconds: float,
    core: int,
    pids: Mapping[str, Sequence[int]] | None = None,
    path: str = "/v1/completions",
) -> dict[str, Any]:
    """One wrk run; with `pids` ({name: processes}), also the CPU each group spent: in all
    (`cpu_s`) and per request (`cpu_us_per_request`, the sum of the groups)."""
    duration = f"-d{max(1, round(seconds))}s"
    cmd = [
        "taskset", "-c", str(core), "wrk", "-t1", f"-c{connections}", duration,
        "--timeout", "5s", "-s", str(lua), url + path,
    ]  # fmt: skip
    groups = dict(pids or {})
    cpu0 = {k: cpu_seconds(v) for k, v in groups.items()}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu = {k: cpu_seconds(v) - cpu0[k] for k, v in groups.items()}
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    if groups:
        # CPU the proxy spent per request: what bounds req/s on a core of its own, whatever
        # else the machine did during the run.
        n = max(1, result["requests"])
        result["cpu_s"] = cpu
        result["cpu_us_per_request"] = 1e6 * sum(cpu.values()) / n
    return result


def histogram_buckets(url: str, name: str) -> list[tuple[float, float]]:
    """A Prometheus histogram's cumulative buckets (upper bound, count) from `url`/metrics,
    summed over its label sets."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    sums: dict[float, float] = {}
    for ln in text.splitlines():
        if ln.startswith(name + "_bucket"):
            le = float(ln.split('le="')[1].split('"')[0])
            sums[le] = sums.get(le, 0.0) + float(ln.rsplit(" ", 1)[1])
    return sorted(sums.items())


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> tuple[float, float] | None:
    """Quantile `q` of cumulative buckets: (linear within its bucket, as Prometheus'
    histogram_quantile; the bucket's upper bound)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower, le
            within = (rank - below) / (count - below) if count > below else 1.0
            return lower + (le - lower) * within, le
        lower, below = le, count
    return None


def histogram_quantile(url: str, name: str, q: float) -> float | None:
    """Quantile `q` of a Prometheus histogram: the first bucket bound that reaches it."""
    got = bucket_quantile(histogram_buckets(url, name), q)
    return got[1] if got else None


async def decide_latency(replicas: list[int], n: int, policy: str) -> dict[str, float]:
    """Time `Router.decide` against the live predictors, one decision after another."""
    from block.scheduler.discovery import static_endpoints
    from block.scheduler.metrics import SchedulerMetrics
    from block.scheduler.predicting import PredictorClient
    from block.scheduler.replicas import ReplicaSet
    from block.scheduler.routing import Router
    from block.scheduler.settings import SchedulerSettings
    from block.simulator.policies import RouteRequest

    urls = [f"http://127.0.0.1:{p}" for p in replicas]
    settings = SchedulerSettings(replicas=urls, policy=policy, predict_deadline_s=0.005)
    metrics = SchedulerMetrics.create()
    replica_set = ReplicaSet()
    replica_set.update(static_endpoints(urls))
    predictor = PredictorClient(settings, metrics)
    router = Router(settings, replica_set, predictor, metrics, random.Random(0))
    route = RouteRequest(prompt_tokens=12, output_tokens=16)
    times, cpu, answered, asked = [], [], 0, 0
    warmup = 200
    for i in range(n + warmup):
        t0, c0 = time.perf_counter(), time.process_time()
        decision = await router.decide(route, set())
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        decision.ticket.release()
        if i >= warmup:  # connections are open by then
            times.append(dt)
            cpu.append(dc)
            answered += decision.answered
            asked += decision.asked
    await predictor.close()
    times.sort()
    cpu.sort()
    return {
        "p50_ms": 1e3 * times[len(times) // 2],
        "p99_ms": 1e3 * times[int(len(times) * 0.99)],
        "mean_ms": 1e3 * statistics.fmean(times),
        # The decision's own CPU (this process only): its latency on a core of its own, less
        # the predictors' answer time.
        "cpu_p50_ms": 1e3 * cpu[len(cpu) // 2],
        "cpu_p99_ms": 1e3 * cpu[int(len(cpu) * 0.99)],
        "answered_ratio": answered / max(1, asked),
    }


def stop_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each, then wait (SIGKILL after 10 s)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
