"""Gateway overhead on loopback: added latency and max req/s, vs straight-to-replica and nginx.

    .venv/bin/python bench/gateway_overhead.py [--rounds 3] [--seconds 5] [--json out.json]

Needs `nginx` and `wrk` (Debian packages). What runs, all on 127.0.0.1:

* 8 replicas: one nginx (its own process, pinned to the load generator's core) answering
  `/v1/completions` with a fixed completion body and `/v1/predict` with a fixed
  `block.wire.predict.PredictResponse`, so the replica side costs next to nothing and every
  microsecond measured is the proxy's;
* targets, each pinned to core 0 ("one core"): the replicas directly (the baseline); nginx
  as a plain round-robin proxy over the 8 (keep-alive upstreams: the proxy-overhead floor);
  `block scheduler` with `round-robin` (no fan-out), `block-k2` (fan-out to 2 predictors),
  `block` (fan-out to all 8), and `block` with the shipped length estimator (the others use the
  length prior);
* wrk (pinned to core 1) drives each target in turn, round after round (a `--settle` pause
  before each latency run), so drift on a shared machine hits all targets alike: `-c1` for
  latency (p50/p99 of sequential requests; added
  latency = target minus direct), `-c64` for throughput (max req/s).

Decision latency (policy `block`, fan-out to 8 predictors) is measured in-process too: the
gateway's `Router.decide` timed with `perf_counter` against the same 8 predictors, 2000
decisions one after another, plus the `block_scheduler_decision_seconds` histogram of the
loaded gateway.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPLICAS = 8
# (target name, policy, length source) of the gateways measured.
GATEWAYS = (
    ("gateway round-robin", "round-robin", "prior"),  # no fan-out
    ("gateway block-k2", "block-k2", "prior"),  # fan-out to 2 predictors
    ("gateway block", "block", "prior"),  # fan-out to all 8
    ("gateway block+estimator", "block", "estimator"),  # plus the shipped length estimator
)
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


def replica_servers(ports: list[int]) -> str:
    out = []
    for p in ports:
        out.append(
            f"""
  server {{
    listen 127.0.0.1:{p};
    default_type application/json;
    location = /v1/completions {{ return 200 '{COMPLETION}'; }}
    location = /v1/predict {{ return 200 '{PREDICTION}'; }}
    location = /readyz {{ return 200 '{{"ready":true}}'; }}
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
    import socket

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


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (from /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wrk(
    url: str, lua: Path, connections: int, seconds: float, core: int, pids: list[int]
) -> dict[str, Any]:
    """One wrk run; with `pids`, also the CPU those processes spent per request."""
    duration = f"-d{max(1, round(seconds))}s"
    cmd = [
        "taskset", "-c", str(core), "wrk", "-t1", f"-c{connections}", duration,
        "--timeout", "5s", "-s", str(lua), url + "/v1/completions",
    ]  # fmt: skip
    cpu0 = cpu_seconds(pids)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pids) - cpu0
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    if pids:
        # CPU the proxy spent per request: what bounds req/s on a core of its own, whatever
        # else the machine did during the run.
        result["cpu_us_per_request"] = 1e6 * cpu / max(1, result["requests"])
    return result


def gateway_cmd(port: int, replicas: list[int], policy: str, lengths: str = "prior") -> list[str]:
    urls = ",".join(f"http://127.0.0.1:{p}" for p in replicas)
    return [
        str(Path(sys.executable).parent / "block"), "scheduler", "--port", str(port),
        "--replicas", urls, "--policy", policy, "--length-source", lengths,
        "--health-interval-s", "0", "--log-level", "WARNING", "--no-access-log",
        "--predict-deadline-ms", "5",
    ]  # fmt: skip


def histogram_quantile(url: str, name: str, q: float) -> float | None:
    """Quantile `q` of a Prometheus histogram: the first bucket bound that reaches it."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    buckets = []
    for ln in text.splitlines():
        if ln.startswith(name + "_bucket"):
            le = ln.split('le="')[1].split('"')[0]
            buckets.append((float(le), float(ln.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    return next(le for le, count in buckets if count >= q * total)


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


def run(
    args: argparse.Namespace, tmp: Path, procs: list[subprocess.Popen[bytes]]
) -> dict[str, Any]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    ports = free_ports(REPLICAS + 1 + len(GATEWAYS))
    rep_ports, nginx_port, gw_ports = ports[:REPLICAS], ports[REPLICAS], ports[REPLICAS + 1 :]
    lua = tmp / "post.lua"
    lua.write_text(WRK_LUA % BODY)
    backends = nginx_conf(tmp, replica_servers(rep_ports), "replicas")
    proxy = nginx_conf(tmp, proxy_server(nginx_port, rep_ports), "proxy")
    procs.append(subprocess.Popen(["taskset", "-c", "1", nginx, "-c", str(backends),
                                   "-p", str(tmp)]))  # fmt: skip
    procs.append(subprocess.Popen(["taskset", "-c", "0", nginx, "-c", str(proxy),
                                   "-p", str(tmp)]))  # fmt: skip
    nginx_master = procs[-1].pid
    targets = {"direct": f"http://127.0.0.1:{rep_ports[0]}",
               "nginx-rr": f"http://127.0.0.1:{nginx_port}"}  # fmt: skip
    pids: dict[str, list[int]] = {"direct": []}
    for port, (name, policy, lengths) in zip(gw_ports, GATEWAYS, strict=True):
        cmd = ["taskset", "-c", "0", *gateway_cmd(port, rep_ports, policy, lengths)]
        procs.append(subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}))
        targets[name] = f"http://127.0.0.1:{port}"
        pids[name] = [procs[-1].pid]  # taskset execs: this is the gateway
    for t, url in targets.items():
        wait_http(url + ("/healthz" if t.startswith("gateway") else "/readyz"), 120.0)
    pids["nginx-rr"] = children(nginx_master)
    for url in targets.values():  # warm up connections and code paths
        wrk(url, lua, 8, 1, 1, [])
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        t: {"latency": [], "throughput": []} for t in targets
    }
    for r in range(args.rounds):
        order = list(targets)
        random.Random(r).shuffle(order)
        for t in order:
            # Let the last run's connections and deferred work settle before timing this one.
            time.sleep(args.settle)
            runs[t]["latency"].append(wrk(targets[t], lua, 1, args.seconds, 1, []))
            runs[t]["throughput"].append(
                wrk(targets[t], lua, args.connections, args.seconds, 1, pids[t])
            )
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    hist = histogram_quantile(targets["gateway block"], "block_scheduler_decision_seconds", 0.99)
    os.sched_setaffinity(0, {0})
    import uvloop

    decide8 = uvloop.run(decide_latency(rep_ports, args.decisions, "block"))
    decide2 = uvloop.run(decide_latency(rep_ports, args.decisions, "block-k2"))
    return {"targets": list(targets), "runs": runs, "hist_p99_s": hist,
            "decide8": decide8, "decide2": decide2}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    ap.add_argument("--connections", type=int, default=64, help="throughput runs")
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--settle", type=float, default=2.0, help="pause before each latency run, s")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"needs {tool} (apt-get install wrk util-linux)", file=sys.stderr)
            return 2
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        print("needs nginx (apt-get install nginx)", file=sys.stderr)
        return 2
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="block-bench-"))
    load_before = os.getloadavg()
    try:
        got = run(args, tmp, procs)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    runs = got["runs"]

    def med(t: str, kind: str, key: str) -> float:
        values = [x[key] for x in runs[t][kind] if key in x]
        return statistics.median(values) if values else float("nan")

    report: dict[str, Any] = {"targets": {}, "load_avg_before": load_before,
                              "load_avg_after": os.getloadavg()}  # fmt: skip
    base50, base99 = med("direct", "latency", "p50_us"), med("direct", "latency", "p99_us")
    print(f"{'target':22} {'p50 µs':>8} {'p99 µs':>8} {'+p50 µs':>8} {'+p99 µs':>8} "
          f"{'req/s':>7} {'CPU µs/req':>10} {'req/s/core':>10}")  # fmt: skip
    for t in got["targets"]:
        p50, p99 = med(t, "latency", "p50_us"), med(t, "latency", "p99_us")
        rps, cpu = med(t, "throughput", "rps"), med(t, "throughput", "cpu_us_per_request")
        errors = sum(x["errors"] + x["non2xx"] for k in runs[t].values() for x in k)
        report["targets"][t] = {
            "p50_us": p50, "p99_us": p99, "added_p50_us": p50 - base50,
            "added_p99_us": p99 - base99, "rps": rps, "cpu_us_per_request": cpu,
            "rps_per_core": 1e6 / cpu if cpu == cpu else None, "errors": errors,
            "runs": runs[t],
        }  # fmt: skip
        per_core = f"{1e6 / cpu:10.0f}" if cpu == cpu else f"{'-':>10}"
        note = f"  ({errors} errors)" if errors else ""
        print(f"{t:22} {p50:8.0f} {p99:8.0f} {p50 - base50:8.0f} {p99 - base99:8.0f} "
              f"{rps:7.0f} {cpu:10.0f} {per_core}{note}")  # fmt: skip
    ng, gw = report["targets"]["nginx-rr"], report["targets"]["gateway round-robin"]
    ratio50 = gw["added_p50_us"] / max(1.0, ng["added_p50_us"])
    ratio99 = gw["added_p99_us"] / max(1.0, ng["added_p99_us"])
    print(f"added latency, gateway round-robin / nginx: p50 {ratio50:.2f}x, p99 {ratio99:.2f}x")
    for t in ("nginx-rr", "gateway round-robin"):  # the machine's noise moves between rounds
        by_round = ", ".join(str(x["p99_us"]) for x in runs[t]["latency"])
        print(f"p99 µs by round, {t}: {by_round}")
    for key, name in (("decide8", "block, fan-out to 8"), ("decide2", "block-k2, fan-out to 2")):
        d = got[key]
        print(
            f"decision latency, {name}, in-process: p50 {d['p50_ms']:.3f} ms, "
              f"p99 {d['p99_ms']:.3f} ms (CPU p50 {d['cpu_p50_ms']:.3f}, "
              f"p99 {d['cpu_p99_ms']:.3f} ms), {d['answered_ratio']:.1%} answered in time"
        )  # fmt: skip
    print(f"decision latency p99 in the loaded gateway (histogram bucket): {got['hist_p99_s']} s")
    print(f"load average before/after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f}")
    report.update(added_ratio_vs_nginx={"p50": ratio50, "p99": ratio99},
                  decision_block8=got["decide8"], decision_blockk2=got["decide2"],
                  decision_block8_loaded_p99_bucket_s=got["hist_p99_s"])  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
