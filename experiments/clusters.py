"""The simulated cluster an experiment runs on, and its command-line flags.

Defaults are the Block paper's Fig. 6 setup: 12 replicas of Llama-2-7B on A100 GPUs with the
Sarathi scheduler, chunked prefill of 512 tokens and a batch cap of 48 sequences.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from functools import cached_property

from block.simulator.latency import LatencyModel
from block.simulator.replica import Replica, ReplicaConfig


@dataclass(frozen=True)
class ClusterSpec:
    gpu: str = "a100"
    model: str = "meta-llama/Llama-2-7b-hf"
    tp: int = 1
    replicas: int = 12
    scheduler: str = "sarathi"
    chunk_tokens: int = 512
    max_num_seqs: int = 48

    @cached_property
    def latency(self) -> LatencyModel:
        return LatencyModel.load(self.gpu, self.model, self.tp)

    @property
    def config(self) -> ReplicaConfig:
        return ReplicaConfig(
            scheduler="sarathi" if self.scheduler == "sarathi" else "vllm",
            max_num_batched_tokens=self.chunk_tokens,
            max_num_seqs=self.max_num_seqs,
        )

    def replicas_(self, n: int) -> list[Replica]:
        """`n` fresh, idle replicas."""
        lat, cfg = self.latency, self.config
        return [Replica(lat, cfg, i) for i in range(n)]

    @property
    def max_model_len(self) -> int:
        return self.latency.model.max_model_len

    def with_engine(self, chunk_tokens: int, max_num_seqs: int) -> ClusterSpec:
        return replace(self, chunk_tokens=chunk_tokens, max_num_seqs=max_num_seqs)

    def describe(self) -> str:
        return (
            f"{self.replicas} x {self.latency.model.name} on {self.latency.gpu.name} "
            f"(TP{self.tp}), {self.scheduler} chunk {self.chunk_tokens}, batch cap "
            f"{self.max_num_seqs}; attention: {self.latency.attention_label}"
        )


def add_arguments(p: argparse.ArgumentParser, replicas: int = 12) -> None:
    p.add_argument(
        "--gpu",
        default="a100",
        help="hardware profile: a100, h100, or a folder on BLOCK_PROFILES_DIR",
    )
    p.add_argument("--model", default="meta-llama/Llama-2-7b-hf", help="model name or alias")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    p.add_argument("--replicas", type=int, default=replicas, help="engine replicas")
    p.add_argument("--scheduler", choices=("sarathi", "vllm"), default="sarathi")
    p.add_argument("--chunk-size", type=int, default=512, help="token budget per step")
    p.add_argument("--max-num-seqs", type=int, default=48, help="batch cap")


def from_args(args: argparse.Namespace) -> ClusterSpec:
    return ClusterSpec(
        gpu=args.gpu,
        model=args.model,
        tp=args.tp,
        replicas=args.replicas,
        scheduler=args.scheduler,
        chunk_tokens=args.chunk_size,
        max_num_seqs=args.max_num_seqs,
    )
