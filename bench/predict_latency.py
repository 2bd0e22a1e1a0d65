"""Predict-one-more latency of the simulator core on realistic replica states.

States: a vLLM-v1 replica of Llama-2-7B on A100 (token budget 512) holding 24 or 48 running
requests with 0, 16 or 64 more waiting, sizes drawn from ShareGPT. For each state, time
`predict_one_more` for candidates of ShareGPT sizes. Reports wall-clock and CPU-time
percentiles (CPU time is what one core spends, unaffected by other load on the machine), plus
the ratio against the cheapest baseline: forking the state without simulating.

    .venv/bin/python bench/predict_latency.py [--repeats 300]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time

import numpy as np

from block.simulator import workloads
from block.simulator.latency import LatencyModel
from block.simulator.prediction import predict_one_more
from block.simulator.replica import Replica, ReplicaConfig
from block.simulator.requests import Request


def build_state(
    lat: LatencyModel, pool: np.ndarray, running: int, waiting: int, seed: int
) -> tuple[Replica, float]:
    """Fill a replica through its own scheduler until `running` run and `waiting` wait."""
    rng = random.Random(seed)
    r = Replica(lat, ReplicaConfig("vllm", 512, running))
    now, rid = 0.0, 0

    def draw() -> tuple[int, int]:
        p, o = pool[rng.randrange(len(pool))]
        return int(min(p, 2048)), int(max(min(o, 1024), 64))

    while r.num_running < running:
        r.submit(Request(rid, now, *draw()), now)
        rid += 1
        now += 0.05
        r.advance_to(now)
    for _ in range(max(0, waiting - r.num_waiting)):
        r.submit(Request(rid, now, *draw()), now)
        rid += 1
    return r, now


def percentiles(xs: list[float]) -> dict[str, float]:
    a = np.array(xs) * 1e6
    return {"p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    lat = LatencyModel.load("a100", "meta-llama/Llama-2-7b-hf")
    pool = workloads.sharegpt_lengths()
    rng = random.Random(7)
    results = []
    gc.freeze()  # as the predictor service does after start-up
    print(
        f"{'state':>18} {'wall p50':>9} {'wall p99':>9} {'cpu p50':>9} {'cpu p99':>9} {'x fork':>7}"
    )
    for running in (24, 48):
        for waiting in (0, 16, 64):
            state, now = build_state(lat, pool, running, waiting, seed=running * 100 + waiting)
            wall, cpu, fork_cpu = [], [], []
            for _ in range(args.repeats):
                p, o = pool[rng.randrange(len(pool))]
                prompt, output = int(min(p, 2048)), int(max(min(o, 1024), 1))
                t0, c0 = time.perf_counter(), time.thread_time()
                predict_one_more(state, prompt, output, now)
                c1, t1 = time.thread_time(), time.perf_counter()
                state.fork()
                c2 = time.thread_time()
                wall.append(t1 - t0)
                cpu.append(c1 - c0)
                fork_cpu.append(c2 - c1)
            w, c = percentiles(wall), percentiles(cpu)
            ratio = float(np.median(cpu) / max(np.median(fork_cpu), 1e-9))
            label = f"{state.num_running} run/{state.num_waiting} wait"
            print(
                f"{label:>18} {w['p50_us']:8.0f}u {w['p99_us']:8.0f}u "
                f"{c['p50_us']:8.0f}u {c['p99_us']:8.0f}u {ratio:6.0f}x"
            )
            results.append({"running": state.num_running, "waiting": state.num_waiting,
                            "wall": w, "cpu": c, "vs_fork_only": ratio})  # fmt: skip
    print("target: p99 under 1000 us on one core (Block's own predictor: 3-47 ms median)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
