"""What the predictor sidecar adds in the request path: time to first byte and throughput
through the sidecar vs straight to the engine twin, side by side, same engine, same run.

Processes: `block engine` (no step noise, so its own timing is the same for both paths) and
`block predictor` in front of it; this script is the client (aiohttp).

- TTFB: sequential streamed completions (short prompt, 1 token), alternating direct and
  through the sidecar so that drift on the machine hits both alike. TTFB is the time to the
  first SSE byte; the engine's own prefill step (~10 ms simulated) is in both.
- Throughput: `--concurrency` clients each streaming `--tokens`-token completions for
  `--seconds`; tokens per second received, and the sidecar's CPU time per token proxied.

    .venv/bin/python bench/proxy_overhead.py [--requests 300] [--concurrency 64]

Target (issue 3): under 1 ms added at p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from _procs import spawn, wait_ready

MODEL = "meta-llama/Llama-2-7b-hf"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def ttfb(session: aiohttp.ClientSession, url: str) -> float:
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 1, "ignore_eos": True,
            "stream": True}  # fmt: skip
    t0 = time.perf_counter()
    async with session.post(url + "/v1/completions", json=body) as r:
        await r.content.readany()
        t = time.perf_counter() - t0
        await r.read()
    return t


async def stream_tokens(session: aiohttp.ClientSession, url: str, tokens: int) -> int:
    body = {"model": MODEL, "prompt": "Hello there", "max_tokens": tokens, "ignore_eos": True,
            "stream": True}  # fmt: skip
    n = 0
    async with session.post(url + "/v1/completions", json=body) as r:
        async for line in r.content:
            if line.startswith(b"data: {"):
                n += 1
    return n


async def throughput(
    session: aiohttp.ClientSession, url: str, concurrency: int, tokens: int, seconds: float
) -> float:
    stop = time.monotonic() + seconds
    total = 0

    async def worker() -> None:
        nonlocal total
        while time.monotonic() < stop:
            n = await stream_tokens(session, url, tokens)  # not `total += await`: it would
            total += n  # read `total` before the await and lose the other workers' counts

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.monotonic() - t0)


def pcts(xs: list[float]) -> tuple[float, float, float]:
    a = np.array(xs) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 90)), float(np.percentile(a, 99))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    engine, engine_url = spawn(["engine", "--max-num-seqs", "256"])
    sidecar, side_url = spawn(["predictor", "--engine-url", engine_url])
    try:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as session:
            await wait_ready(session, engine_url + "/health", 300)
            await wait_ready(session, side_url + "/readyz", 300)
            for _ in range(20):  # warm both paths
                await ttfb(session, engine_url)
                await ttfb(session, side_url)
            direct, proxied = [], []
            for _ in range(args.requests):
                direct.append(await ttfb(session, engine_url))
                proxied.append(await ttfb(session, side_url))
            tput = {}
            cpu = {}
            for name, url in (("direct", engine_url), ("sidecar", side_url)):
                c0 = cpu_seconds(sidecar.pid)
                rate = await throughput(session, url, args.concurrency, args.tokens, args.seconds)
                tput[name] = rate
                cpu[name] = (cpu_seconds(sidecar.pid) - c0) / max(rate * args.seconds, 1) * 1e6
    finally:
        for p in (sidecar, engine):
            p.terminate()
            p.wait(timeout=10)
    d, s = pcts(direct), pcts(proxied)
    diffs = np.array(proxied) - np.array(direct)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"TTFB ms over {args.requests} requests each   p50     p90     p99")
    print(f"  direct to the engine twin     {d[0]:7.2f} {d[1]:7.2f} {d[2]:7.2f}")
    print(f"  through the sidecar           {s[0]:7.2f} {s[1]:7.2f} {s[2]:7.2f}")
    print(
        f"  added (percentile difference) {s[0] - d[0]:7.2f} {s[1] - d[1]:7.2f} {s[2] - d[2]:7.2f}"
    )
    print(f"  added (paired, median)        {float(np.median(diffs)) * 1e3:7.2f}")
    print(f"throughput, {args.concurrency} streams x {args.tokens} tokens, {args.seconds:g} s:")
    print(f"  direct {tput['direct']:8.0f} tok/s   sidecar {tput['sidecar']:8.0f} tok/s "
          f"(ratio {tput['sidecar'] / tput['direct']:.3f}); sidecar CPU "
          f"{cpu['sidecar']:.1f} us per token proxied")  # fmt: skip
    return {
        "ttfb_ms": {
            "direct": d,
            "sidecar": s,
            "paired_median_added": float(np.median(diffs)) * 1e3,
        },
        "throughput_tok_s": tput,
        "sidecar_cpu_us_per_token": cpu["sidecar"],
        "load_average": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
