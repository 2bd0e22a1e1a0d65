"""Live routing on real engines: two stock vLLMs (tools/real-engine, one per core) behind Block's
sidecars and gateway, `block`, `least-requests` and `round-robin` on the same requests.

A functional proof on this 2-core machine, not a capacity study: the two engines each hold a
core, so the sidecars, the gateway and this client share those cores with them, and every
engine step is slowed by what the Python processes beside it do. Engine 1 runs with half the
batch cap of engine 0 (`--max-num-seqs 4` vs 8, told to its sidecar alike), a mixed pool where
load-only rules are blind to the difference.

Each sidecar starts from the A100/Llama-2-7B profile and calibrates online; the gateway routes
with the shipped length estimator. The same held-out ShareGPT prompts (replies capped at 128
tokens) are sent open-loop at `--qps` through each policy's gateway; the client measures TTFT
and e2e.

    .venv/bin/python bench/real_engine_routing.py --json bench/results/real_engine_routing.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from _procs import free_port

from block import terminal
from block.experiments import loadgen, plans

ROOT = Path(__file__).resolve().parents[1]
SERVE = ROOT / "tools" / "real-engine" / "serve.sh"
SERVED = "tiny-llama3"
CAPS = (8, 4)  # max_num_seqs of engine 0 and engine 1


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not up in {timeout_s:.0f} s")


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def summarize(results: list[loadgen.Result]) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    ttft = np.array([r.ttft_s for r in ok])
    e2e = np.array([r.e2e_s for r in ok])
    return {
        "requests": len(results),
        "failed": len(results) - len(ok),
        "ttft_p50_s": float(np.median(ttft)),
        "ttft_p99_s": float(np.quantile(ttft, 0.99)),
        "e2e_p50_s": float(np.median(e2e)),
        "e2e_p99_s": float(np.quantile(e2e, 0.99)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--policies", nargs="+", default=["block", "least-requests", "round-robin"])
    ap.add_argument("--qps", type=float, default=2.5)
    ap.add_argument("--requests", type=int, default=120)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="out/real-engine-routing")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not (ROOT / ".cache" / "real-engine" / "venv" / ".real-engine-stamp").is_file():
        sys.exit("the real engine is not built: run `make real-engine`")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = terminal.console()
    block = str(Path(sys.executable).parent / "block")
    procs: list[subprocess.Popen[bytes]] = []
    result: dict[str, Any] = {"qps": args.qps, "caps": CAPS, "policies": {}}
    try:
        sidecars = []
        for i, cap in enumerate(CAPS):
            port = free_port()
            eng = spawn([str(SERVE), str(port), "--max-num-seqs", str(cap)],
                        out / f"vllm-{i}.log", {"REAL_ENGINE_CPUS": str(i)})  # fmt: skip
            procs.append(eng)
            wait_http(f"http://127.0.0.1:{port}/health", 300, eng)
            sport = free_port()
            side = spawn([block, "predictor", "--port", str(sport), "--engine-url",
                          f"http://127.0.0.1:{port}", "--served-model-name", SERVED,
                          "--max-num-seqs", str(cap)], out / f"predictor-{i}.log")  # fmt: skip
            procs.append(side)
            wait_http(f"http://127.0.0.1:{sport}/readyz", 120, side)
            sidecars.append(f"http://127.0.0.1:{sport}")
        console.print(f"2 vLLM engines (max_num_seqs {CAPS}) + sidecars up")
        plan = plans.plan("sharegpt", args.requests, args.qps, args.seed, max_model_len=4096,
                          max_tokens_cap=128)  # fmt: skip
        for policy in args.policies:
            gport = free_port()
            argv = [block, "scheduler", "--port", str(gport), "--policy", policy,
                    "--replicas", ",".join(sidecars)]  # fmt: skip
            gw = spawn(argv, out / f"gateway-{policy}.log")
            try:
                wait_http(f"http://127.0.0.1:{gport}/healthz", 120, gw)
                cfg = loadgen.BenchConfig(url=f"http://127.0.0.1:{gport}", model=SERVED)
                results, wall, _ = asyncio.run(loadgen.run_plan(cfg, plan))
                with urllib.request.urlopen(f"http://127.0.0.1:{gport}/metrics") as r:
                    metrics = r.read().decode()
                routed = [ln for ln in metrics.splitlines()
                          if ln.startswith("block_scheduler_decisions_total")]  # fmt: skip
                s = summarize(results)
                s["wall_s"] = wall
                s["routed"] = routed
                result["policies"][policy] = s
                console.print(
                    f"{policy:>15}: TTFT p50/p99 {s['ttft_p50_s']:.3f}/{s['ttft_p99_s']:.3f} s, "
                    f"e2e p50/p99 {s['e2e_p50_s']:.2f}/{s['e2e_p99_s']:.2f} s, "
                    f"{s['failed']} failed of {s['requests']}"
                )
            finally:
                stop(gw)
                time.sleep(2.0)
    finally:
        for p in reversed(procs):
            stop(p)
    result["command"] = " ".join(["bench/real_engine_routing.py", *sys.argv[1:]])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
