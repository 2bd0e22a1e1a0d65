"""Whole-cluster simulation speed: `block` (a fork per replica per request) vs round-robin.

10,000 ShareGPT requests on 12 Llama-2-7B/A100 replicas (Sarathi, chunk 512, batch cap 48) at
QPS 40, both policies in this process on the same requests; prints wall times and the ratio.
Targets (issue 2): round-robin under 10 s; block at most 5x round-robin.

    .venv/bin/python bench/cluster_speed.py [--requests 10000] [--qps 40]
"""

from __future__ import annotations

import argparse
import time

from block.simulator import cluster, policies, summary, workloads
from block.simulator.latency import LatencyModel
from block.simulator.replica import Replica, ReplicaConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--qps", type=float, default=40.0)
    ap.add_argument("--replicas", type=int, default=12)
    args = ap.parse_args()
    lat = LatencyModel.load("a100", "meta-llama/Llama-2-7b-hf")
    cfg = ReplicaConfig("sarathi", 512, 48)
    reqs = workloads.synthesize("sharegpt", args.requests, args.qps, 1, 4096)
    walls = {}
    for name in ("round-robin", "block"):
        reps = [Replica(lat, cfg, i) for i in range(args.replicas)]
        t0 = time.perf_counter()
        res = cluster.simulate_cluster(reps, policies.make_policy(name), reqs, seed=1)
        walls[name] = time.perf_counter() - t0
        s = summary.summarize(res.records)
        print(
            f"{name:>12}: {walls[name]:6.2f} s wall, "
            f"{len(reqs) / walls[name]:8.0f} req/s simulated;"
            f" p99 TTFT {s['ttft']['p99']:.3f} s, p99 e2e {s['e2e']['p99']:.2f} s"
        )
    print(f"block / round-robin wall-time ratio: {walls['block'] / walls['round-robin']:.1f}x")


if __name__ == "__main__":
    main()
