"""Prediction accuracy of the predictor sidecar against a noisy engine twin, with the true
response lengths hidden, at three load levels.

Processes: `block engine` with step-time noise and bias (a GPU the profile does not match
exactly) and `block predictor` in front of it; this script plays the gateway. For each request
(ShareGPT prompt/reply sizes, Poisson arrivals) it asks `POST /v1/predict`, then sends the
request through the sidecar (streamed, `ignore_eos` with `max_tokens` = the true length, so
the engine generates exactly that) and measures TTFT and e2e at the client.

Two modes, each with a fresh engine and sidecar:
- oracle: the sidecar knows every length (`x-block-output-tokens` = the truth, and the
  candidate asked about uses it);
- estimated: lengths are hidden (`--no-trust-ignore-eos`, no header); the candidate and every
  in-flight request get the prior (ShareGPT's mean reply, capped by max_tokens) and, once they
  outrun it, E[L - l | L > l].

Reports MAPE (and median absolute percentage error) of predicted TTFT and e2e per load level
and mode, over requests that arrived after a warm-up.

    .venv/bin/python bench/predictor_accuracy.py [--qps 3 6 10] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from _procs import spawn, wait_ready

from block.predictor.lengths import LengthDistribution
from block.simulator import workloads

MODEL = "meta-llama/Llama-2-7b-hf"
CONTEXT = 4096


@dataclass
class Result:
    arrival_s: float
    prompt: int
    output: int
    pred_ttft: float
    pred_e2e: float
    ttft: float
    e2e: float


def workload(qps: float, seconds: float, seed: int) -> list[tuple[float, int, int]]:
    """(arrival, prompt tokens, true output tokens), ShareGPT sizes fitted to the context."""
    rng = random.Random(seed)
    pool = workloads.sharegpt_lengths()
    out, t = [], 0.0
    while True:
        t += rng.expovariate(qps)
        if t > seconds:
            return out
        while True:
            p, o = pool[rng.randrange(len(pool))]
            fitted = workloads.fit_lengths(int(p), int(o), CONTEXT)
            if fitted is not None and fitted[0] < CONTEXT - 1:
                break
        p, o = fitted
        o = max(1, min(o, CONTEXT - p))
        out.append((t, p, o))


async def one(
    session: aiohttp.ClientSession,
    url: str,
    prompt: int,
    output: int,
    oracle: bool,
    prior: LengthDistribution,
) -> tuple[float, float, float, float]:
    cap = output if oracle else CONTEXT - prompt
    estimate = output if oracle else prior.expected(cap)
    async with session.post(
        url + "/v1/predict", json={"prompt_tokens": prompt, "output_tokens": estimate}
    ) as r:
        pred = await r.json()
        assert r.status == 200, pred
    body = {"model": MODEL, "prompt": " ".join(["word"] * (prompt - 1)), "max_tokens": output,
            "ignore_eos": True, "stream": True}  # fmt: skip
    headers = {"x-block-output-tokens": str(output)} if oracle else {}
    t0 = time.perf_counter()
    ttft = None
    async with session.post(url + "/v1/completions", json=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        async for chunk in r.content.iter_any():
            if ttft is None and b'"text":"' in chunk and b'"text":""' not in chunk:
                ttft = time.perf_counter() - t0
    e2e = time.perf_counter() - t0
    return pred["ttft_s"], pred["e2e_s"], ttft if ttft is not None else e2e, e2e


async def run_mode(
    qps: float, seconds: float, oracle: bool, args: argparse.Namespace, prior: LengthDistribution
) -> tuple[list[Result], dict[str, Any]]:
    engine, engine_url = spawn(
        ["engine", "--noise-sigma", str(args.noise_sigma), "--bias", str(args.bias),
         "--seed", str(args.seed)]
    )  # fmt: skip
    side_args = ["predictor", "--engine-url", engine_url]
    if not oracle:
        side_args.append("--no-trust-ignore-eos")
    sidecar, side_url = spawn(side_args)
    results: list[Result] = []
    try:
        conn = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
            await wait_ready(session, engine_url + "/health", 600)
            await wait_ready(session, side_url + "/readyz", 600)
            start = time.perf_counter()

            async def fire(t: float, p: int, o: int) -> None:
                delay = start + t - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                pt, pe, tt, e2e = await one(session, side_url, p, o, oracle, prior)
                results.append(Result(t, p, o, pt, pe, tt, e2e))

            jobs = workload(qps, seconds, args.seed)
            await asyncio.gather(*(fire(*j) for j in jobs))
            async with session.get(side_url + "/v1/state") as r:
                state = await r.json()
    finally:
        for p in (sidecar, engine):
            p.terminate()
            p.wait(timeout=10)
    return results, state


def errors(results: list[Result], warmup_s: float) -> dict[str, float]:
    rs = [r for r in results if r.arrival_s >= warmup_s]
    ttft_ape = np.array([abs(r.pred_ttft - r.ttft) / r.ttft for r in rs])
    e2e_ape = np.array([abs(r.pred_e2e - r.e2e) / r.e2e for r in rs])
    return {
        "requests": len(rs),
        "ttft_mape": float(ttft_ape.mean()),
        "ttft_mdape": float(np.median(ttft_ape)),
        "ttft_mae_ms": float(np.mean([abs(r.pred_ttft - r.ttft) for r in rs]) * 1e3),
        "ttft_mpe": float(np.mean([(r.pred_ttft - r.ttft) / r.ttft for r in rs])),
        "e2e_mape": float(e2e_ape.mean()),
        # Signed: below zero the predictions are too short (later arrivals, which the
        # prediction cannot know, slow the request down).
        "e2e_mpe": float(np.mean([(r.pred_e2e - r.e2e) / r.e2e for r in rs])),
        "e2e_mdape": float(np.median(e2e_ape)),
        "ttft_p50_s": float(np.median([r.ttft for r in rs])),
        "e2e_p50_s": float(np.median([r.e2e for r in rs])),
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    prior = LengthDistribution.sharegpt()
    rows = []
    print(f"engine twin: noise sigma {args.noise_sigma}, bias {args.bias}; {args.seconds:g} s "
          f"per run, first {args.warmup:g} s discarded; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    head = f"{'qps':>5} {'lengths':>9} {'n':>5} | {'TTFT MAPE':>9} {'MdAPE':>7} {'MAE ms':>7} "
    print(
        head + f"| {'e2e MAPE':>8} {'MdAPE':>7} {'MPE':>7} | {'TTFT p50':>8} {'e2e p50':>8} "
        "| ext  resync"
    )
    for qps in args.qps:
        for oracle in (True, False):
            results, state = await run_mode(qps, args.seconds, oracle, args, prior)
            e = errors(results, args.warmup)
            mode = "oracle" if oracle else "estimated"
            rows.append({"qps": qps, "mode": mode, **e, "state": state,
                         "per_request": [r.__dict__ for r in results]})  # fmt: skip
            print(f"{qps:5g} {mode:>9} {e['requests']:5d} | {e['ttft_mape']:9.1%} "
                  f"{e['ttft_mdape']:7.1%} {e['ttft_mae_ms']:7.1f} | {e['e2e_mape']:8.1%} "
                  f"{e['e2e_mdape']:7.1%} {e['e2e_mpe']:7.1%} | {e['ttft_p50_s']:8.3f} "
                  f"{e['e2e_p50_s']:8.2f} | "
                  f"{state['length_extensions']:4d} {state['resyncs']:6d}", flush=True)  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--qps", type=float, nargs="+", default=[3.0, 6.0, 10.0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--noise-sigma", type=float, default=0.1)
    ap.add_argument("--bias", type=float, default=1.05)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = asyncio.run(main_async(args))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
