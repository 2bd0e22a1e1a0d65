"""Tensor-parallel shards by shape: what one GPU of a TP group computes.

Megatron-style sharding, as vLLM does it: attention heads and the MLP's intermediate width are
split across the `tp` workers, the hidden size is not; KV heads are split too, and replicated when
there are fewer KV heads than workers. The embedding is split along the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

from block.errors import ConfigError
from block.simulator.models import ModelShape


@dataclass(frozen=True, slots=True)
class WorkerShape:
    """Per-GPU operator dimensions for one model at one tensor-parallel degree."""

    model: ModelShape
    tensor_parallel: int
    q_heads: int
    kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int  # this worker's share of the MLP width
    vocab_rows: int  # this worker's share of the embedding table

    @property
    def q_size(self) -> int:
        return self.q_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def qkv_size(self) -> int:
        """Output width of the fused QKV projection on this worker."""
        return self.q_size + 2 * self.kv_size

    @property
    def up_proj_size(self) -> int:
        """Output width of the (fused gate+up, when gated) MLP up projection."""
        return (2 if self.model.use_gated_mlp else 1) * self.intermediate_size

    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V one token takes in one layer on this worker."""
        return 2 * self.kv_size * self.model.dtype_bytes


def shard(model: ModelShape, tensor_parallel: int) -> WorkerShape:
    """The shape one worker sees; clear error if the model does not split evenly."""
    tp = tensor_parallel
    if tp < 1:
        raise ConfigError(f"tensor parallel degree must be at least 1, got {tp}")
    if model.hidden_size % model.num_heads:
        raise ConfigError(f"{model.name}: hidden size is not a multiple of the head count")
    for what, value in (
        ("attention heads", model.num_heads),
        ("intermediate size", model.intermediate_size),
    ):
        if value % tp:
            raise ConfigError(f"{model.name}: {what} ({value}) do not split over TP {tp}")
    if model.num_kv_heads % tp and tp % model.num_kv_heads:
        raise ConfigError(
            f"{model.name}: {model.num_kv_heads} KV heads neither split over nor replicate "
            f"evenly across TP {tp}"
        )
    return WorkerShape(
        model=model,
        tensor_parallel=tp,
        q_heads=model.num_heads // tp,
        kv_heads=max(1, model.num_kv_heads // tp),
        head_dim=model.head_dim,
        hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size // tp,
        vocab_rows=-(-model.vocab_size // tp),
    )
