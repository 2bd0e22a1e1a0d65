"""Catalogue of model shapes: what the latency model, the KV sizing and the profiler need.

Shapes are the published Hugging Face configs. `profile_vocab_size` is the padded vocabulary the
Vidur profiles were measured with (it only matters for matching those tables).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from block.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ModelShape:
    name: str  # Hugging Face id, e.g. "meta-llama/Llama-2-7b-hf"
    num_layers: int
    hidden_size: int  # n_embd
    num_heads: int  # n_head (query heads)
    num_kv_heads: int  # n_kv_head (grouped-query attention when < num_heads)
    intermediate_size: int  # n_expanded_embd
    vocab_size: int
    max_model_len: int
    use_gated_mlp: bool = True
    dtype_bytes: int = 2  # bf16/fp16 weights and KV cache

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def kv_bytes_per_token(self, tensor_parallel: int = 1) -> int:
        """KV-cache bytes one token occupies on one GPU shard (K and V, every layer)."""
        kv_heads = max(1, self.num_kv_heads // tensor_parallel)
        return 2 * self.num_layers * kv_heads * self.head_dim * self.dtype_bytes

    def num_params(self) -> int:
        """Parameter count (embeddings, attention, MLP, norms, LM head)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        kv = self.num_kv_heads * self.head_dim
        attn = h * h + 2 * h * kv + h * h  # q, k, v, o projections
        mlp = (3 if self.use_gated_mlp else 2) * h * i
        per_layer = attn + mlp + 2 * h
        return self.num_layers * per_layer + 2 * v * h + h

    def weight_bytes(self, tensor_parallel: int = 1) -> int:
        return self.num_params() * self.dtype_bytes // tensor_parallel


def _shape(
    name: str,
    layers: int,
    hidden: int,
    heads: int,
    kv: int,
    inter: int,
    vocab: int,
    ctx: int,
    gated: bool = True,
) -> ModelShape:
    return ModelShape(name, layers, hidden, heads, kv, inter, vocab, ctx, gated)


CATALOGUE: dict[str, ModelShape] = {
    m.name: m
    for m in (
        _shape("meta-llama/Llama-2-7b-hf", 32, 4096, 32, 32, 11008, 32000, 4096),
        _shape("meta-llama/Llama-2-70b-hf", 80, 8192, 64, 8, 28672, 32000, 4096),
        _shape("meta-llama/Meta-Llama-3-8B", 32, 4096, 32, 8, 14336, 128256, 8192),
        _shape("meta-llama/Meta-Llama-3-70B", 80, 8192, 64, 8, 28672, 128256, 8192),
        _shape("Qwen/Qwen2-7B", 28, 3584, 28, 4, 18944, 152064, 32768),
        _shape("Qwen/Qwen-72B", 80, 8192, 64, 64, 24576, 152064, 32768),
        _shape("codellama/CodeLlama-34b-Instruct-hf", 48, 8192, 64, 8, 22016, 32000, 16384),
        _shape("internlm/internlm-20b", 60, 5120, 40, 40, 13824, 103168, 4096),
        _shape("microsoft/phi-2", 32, 2560, 32, 32, 10240, 51200, 2048, gated=False),
    )
}

# Short names users type, e.g. `--model llama-2-7b`.
ALIASES: dict[str, str] = {
    name.split("/", 1)[1].lower().removesuffix("-hf"): name for name in CATALOGUE
}


def get_model(name: str) -> ModelShape:
    """Look a model up by Hugging Face id or short alias, or read a Hugging Face `config.json`
    (a path to the file or to its folder); clear error listing what exists."""
    if name in CATALOGUE:
        return CATALOGUE[name]
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return from_hf_config(path / "config.json")
    if path.suffix == ".json" and path.is_file():
        return from_hf_config(path)
    key = name.lower().removesuffix("-hf")
    if key in ALIASES:
        return CATALOGUE[ALIASES[key]]
    known = ", ".join(sorted(CATALOGUE))
    raise ConfigError(
        f"unknown model {name!r}; known models: {known} (or a config.json, or its folder)"
    )


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1}


def from_hf_config(path: Path, name: str | None = None) -> ModelShape:
    """Read a Hugging Face `config.json` (Llama-style field names) into a shape."""
    try:
        cfg = json.loads(path.read_text())
        heads = int(cfg["num_attention_heads"])
        # The name keys the profile folder (<gpu>/<org>/<model>/): the config's own id, else
        # the model's folder.
        default = path.parent.name if path.name == "config.json" else path.stem
        return ModelShape(
            name=name or str(cfg.get("_name_or_path") or default),
            num_layers=int(cfg["num_hidden_layers"]),
            hidden_size=int(cfg["hidden_size"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads", heads)),
            intermediate_size=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]),
            max_model_len=int(cfg.get("max_position_embeddings", 4096)),
            use_gated_mlp=cfg.get("hidden_act", "silu") in ("silu", "swiglu"),
            dtype_bytes=_DTYPE_BYTES.get(str(cfg.get("torch_dtype", "bfloat16")), 2),
        )
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"cannot read model config {path}: {e}") from e
