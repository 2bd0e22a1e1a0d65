"""`block profile`: measure one model's operator tables on this machine's GPU and write them.

Needs torch with CUDA (the `gpu` extra); `block.profiler.commands` imports this lazily.
"""

from __future__ import annotations

import datetime
import importlib
import json
import logging
import platform
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from block.errors import ConfigError
from block.profiler import grids, tables
from block.profiler.sharding import shard
from block.simulator.models import ModelShape, from_hf_config, get_model

logger = logging.getLogger(__name__)

MIXED_SLACK = 4096  # KV rows for the prefill chunk packed with each mixed-decode point


@dataclass(frozen=True, slots=True)
class ProfileRequest:
    model: str  # catalogue name/alias, or a path to an HF config.json
    tensor_parallel: Sequence[int]
    out_dir: Path
    grid: grids.Preset = "modest"
    max_seq_len: int = 4096
    max_tokens: int = 4096
    warmup: int = 3
    repeats: int = 10
    use_compile: bool = True
    block_size: int = 16
    only: str | None = None  # "mlp" or "attention"


def resolve_model(spec: str) -> ModelShape:
    """A catalogue name, or an HF-style config JSON file."""
    path = Path(spec)
    if spec.endswith(".json") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"model config {spec} does not exist")
        return from_hf_config(path)
    return get_model(spec)


def _driver_version() -> str:
    try:
        pynvml = importlib.import_module("pynvml")  # nvidia-ml-py, present on CUDA images
        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # NVML missing or unusable: fall back to the command-line tool
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "unknown"
    try:
        done = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return done.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def run(req: ProfileRequest) -> dict[str, object]:
    """Measure and write `mlp.csv`, `attention.csv`, `meta.json` into `req.out_dir`."""
    model = resolve_model(req.model)
    workers = [shard(model, tp) for tp in req.tensor_parallel]  # shape errors before the GPU
    token_grid = grids.num_tokens_grid(req.max_tokens)
    max_seq_len = min(req.max_seq_len, model.max_model_len)
    try:
        import torch
    except ImportError as e:
        raise ConfigError("profiling needs PyTorch: pip install 'block-llm[gpu]'") from e
    if not torch.cuda.is_available():
        raise ConfigError("profiling needs a CUDA GPU and none is visible to PyTorch")
    from block.profiler import measure, ops, timing

    torch.manual_seed(0)
    fused = ops.make_fused_ops(req.use_compile)
    attn = ops.select_attention()
    timer = timing.Timer(req.warmup, req.repeats)
    attn_errors: dict[int, float] = {}
    for w in workers:
        attn, attn_errors[w.tensor_parallel] = ops.check_attention(
            attn, w.q_heads, w.kv_heads, w.head_dim
        )
    logger.info("profiling %s on %s", model.name, torch.cuda.get_device_name())
    mlp_rows: list[tables.MlpRow] = []
    attn_rows: list[tables.AttentionRow] = []
    mixed_rows: list[tables.AttentionRow] = []
    grid_sizes: dict[str, int] = {}
    for w in workers:
        if req.only in (None, "mlp"):
            mlp_rows += measure.profile_mlp(w, token_grid, fused, timer)
            torch.cuda.empty_cache()
        if req.only in (None, "attention"):
            free_bytes, _ = torch.cuda.mem_get_info()
            # Half the free memory for K and V of one layer; the rest for activations.
            capacity = int(free_bytes * 0.5) // w.kv_bytes_per_token()
            grid = grids.attention_grid(max_seq_len, capacity, req.grid)
            need = max(
                [p.chunk_tokens + p.kv_tokens for p in grid.prefill]
                + [d.batch_size * (d.kv_tokens + 1) for d in grid.decode]
            )
            grid_sizes[f"tp{w.tensor_parallel}"] = len(grid)
            attn_rows += measure.profile_attention(
                w, grid, attn, timer, max_seq_len, req.block_size, need
            )
            torch.cuda.empty_cache()
            mixed_rows += measure.profile_mixed_decode(
                w, grid, attn, timer, max_seq_len, req.block_size, need + MIXED_SLACK
            )
            torch.cuda.empty_cache()
    out = req.out_dir
    written: dict[str, int] = {}
    if mlp_rows:
        written["mlp.csv"] = tables.write_mlp_csv(out / "mlp.csv", mlp_rows)
    if attn_rows:
        attn_rows = tables.pool_kv_save(attn_rows)
        written["attention.csv"] = tables.write_attention_csv(out / "attention.csv", attn_rows)
    if mixed_rows:
        written["attention_mixed.csv"] = tables.write_attention_csv(
            out / "attention_mixed.csv", mixed_rows
        )
    props = torch.cuda.get_device_properties(0)
    meta: dict[str, object] = {
        "gpu_name": torch.cuda.get_device_name(),
        "gpu_memory_bytes": int(props.total_memory),
        "gpu_multiprocessors": int(props.multi_processor_count),
        "driver_version": _driver_version(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "attention_kernel": attn.name,
        "attention_q_layout": "strided view" if attn.strided_ok else "contiguous copy",
        "attention_check_rel_error": attn_errors,
        "kv_layout": "contiguous per sequence (varlen); block_size column is nominal",
        "kv_cache_save": "pooled over the grid points that write as many tokens",
        "attention_inputs": "q/k/v arrive as transformers' Llama makes them, (1, heads, tokens, "
        "dim); attn_input_reshape is the change to (tokens, heads, dim), attn_output_reshape "
        "the view back",
        "elementwise_ops": fused.mode,
        "gemm": "torch.nn.functional.linear (cuBLAS), fused QKV and fused gate+up weights",
        "dtype": "bfloat16",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": asdict(model),
        "tensor_parallel": list(req.tensor_parallel),
        "grid": req.grid,
        "attention_points": grid_sizes,
        "max_seq_len": max_seq_len,
        "max_tokens": req.max_tokens,
        "warmup": req.warmup,
        "repeats": req.repeats,
        "l2_flush_bytes": timing.L2_FLUSH_BYTES,
        "timing_retries": timer.retries,
        "rows": written,
        "mixed_decode_chunk_tokens": measure.MIXED_CHUNK_TOKENS,
        "time_unit": "ms",
    }
    meta_path = out / "meta.json"
    if req.only and meta_path.is_file():
        # A partial re-run keeps what the earlier run recorded about the other table.
        earlier = json.loads(meta_path.read_text())
        meta["rows"] = {**earlier.get("rows", {}), **written}
        meta = {**earlier, **meta}
    tables.write_meta(meta_path, meta)
    logger.info("wrote %s to %s", ", ".join(f"{k} ({v} rows)" for k, v in written.items()), out)
    return meta
