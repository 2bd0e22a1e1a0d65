"""The GPU operators the profiler times (and the step validation runs), built on PyTorch.

Needs torch (the `gpu` extra); import it only from code that runs on a CUDA machine.

Elementwise operators (RMSNorm, rotary embedding, SiLU-and-multiply) are the Llama reference
math of Hugging Face transformers, compiled by `torch.compile` into one fused kernel each, the way
serving engines run them (vLLM uses hand-written fused kernels or torch.compile). If compilation
fails the eager versions are used and `FusedOps.mode` says so; every compiled operator is checked
against its eager twin before use.

Attention is FlashAttention-2 in its variable-length ("varlen") form, the kernel serving engines
call for batches that mix prefill chunks and decodes: the `flash_attn` package when installed,
otherwise the copy PyTorch ships (`torch.ops.aten._flash_attention_forward`). Causal masking is
bottom-right aligned, so a chunk's queries see the whole cached prefix.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from block.errors import ConfigError

logger = logging.getLogger(__name__)

Tensor = Any  # torch.Tensor; Any keeps mypy usable on machines without torch


def rms_norm_ref(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """LlamaRMSNorm: normalise in float32, scale in the input dtype."""
    dtype = x.dtype
    xf = x.float()
    variance = xf.pow(2).mean(-1, keepdim=True)
    return weight * (xf * torch.rsqrt(variance + eps)).to(dtype)


def silu_mul_ref(gate: Tensor, up: Tensor) -> Tensor:
    """The gated MLP's activation: silu(gate) * up."""
    return F.silu(gate) * up


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_ref(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, unsqueeze_dim: int = 1) -> Any:
    """transformers' apply_rotary_pos_emb: q/k are (batch, heads, tokens, head_dim)."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def rope_cache(max_positions: int, head_dim: int, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos/sin tables (positions x head_dim, bf16) as LlamaRotaryEmbedding computes them."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device="cuda") / head_dim)
    )
    positions = torch.arange(max_positions, dtype=torch.float32, device="cuda")
    freqs = torch.outer(positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(torch.bfloat16), emb.sin().to(torch.bfloat16)


@dataclass(frozen=True)
class FusedOps:
    rms_norm: Callable[..., Any]
    silu_mul: Callable[..., Any]
    rope: Callable[..., Any]
    mode: str  # "torch.compile" or "eager (...why...)"


def _rel_err(out: Tensor, ref: Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not bool(torch.isfinite(out).all()):
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def _check_fused(ops: FusedOps, hidden: int = 4096, heads: int = 8, head_dim: int = 128) -> None:
    """Fresh random inputs through each fused op vs its eager reference; raises on mismatch."""
    for tokens in (1, 7, 300):
        x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
        g, u = torch.randn(2, tokens, 2 * hidden, device="cuda", dtype=torch.bfloat16)
        q = torch.randn(1, tokens, heads, head_dim, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, tokens, 2, head_dim, device="cuda", dtype=torch.bfloat16)
        cos, sin = (t[:tokens].unsqueeze(0) for t in rope_cache(tokens, head_dim))
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        errors = {
            "rms_norm": _rel_err(ops.rms_norm(x, w, 1e-5), rms_norm_ref(x, w, 1e-5)),
            "silu_mul": _rel_err(ops.silu_mul(g, u), silu_mul_ref(g, u)),
        }
        (fq, fk), (rq, rk) = ops.rope(q, k, cos, sin), rope_ref(q, k, cos, sin)
        errors["rope"] = max(_rel_err(fq, rq), _rel_err(fk, rk))
        bad = {name: e for name, e in errors.items() if not e < 2e-2}
        if bad:
            raise RuntimeError(f"fused ops differ from the reference at {tokens} tokens: {bad}")


def make_fused_ops(use_compile: bool = True) -> FusedOps:
    """Compiled fused elementwise ops, or the eager ones when compiling is off or fails."""
    eager = FusedOps(rms_norm_ref, silu_mul_ref, rope_ref, "eager")
    if not use_compile:
        return eager
    try:
        import torch._dynamo

        # Many shapes and layouts meet these functions (MLP table, step validation): allow
        # enough compiled variants that none falls back to eager silently.
        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)

        def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
            return torch.compile(fn, dynamic=True, fullgraph=True)  # type: ignore[no-any-return]

        ops = FusedOps(
            compiled(rms_norm_ref), compiled(silu_mul_ref), compiled(rope_ref), "torch.compile"
        )
        _check_fused(ops)
        return ops
    except Exception as e:  # a compiler failure must not lose the whole profile
        logger.warning("torch.compile unusable, timing eager elementwise ops: %s", e)
        return FusedOps(rms_norm_ref, silu_mul_ref, rope_ref, f"eager (compile failed: {e})")


@dataclass(frozen=True)
class VarlenAttention:
    """FlashAttention varlen forward: q (Tq, Hq, D), k/v (Tk, Hkv, D) -> (Tq, Hq, D).

    FlashAttention takes token and head strides as arguments, so q may be a strided view (as
    transformers' (1, heads, tokens, dim) layout transposed to (tokens, heads, dim) is), as long as
    its last dimension is contiguous; `strided_ok` is False when the kernel refused such a view in
    `check_attention`, and `prepare` then copies.
    """

    name: str
    fn: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, int, int, float], Tensor]
    strided_ok: bool = True

    def prepare(self, x: Tensor) -> Tensor:
        """A (tokens, heads, dim) view in the layout this kernel accepts."""
        return x if self.strided_ok and x.stride(-1) == 1 else x.contiguous()

    def __call__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        cu_q: Tensor,
        cu_k: Tensor,
        max_q: int,
        max_k: int,
        scale: float,
    ) -> Tensor:
        return self.fn(q, k, v, cu_q, cu_k, max_q, max_k, scale)


def _aten_flash(
    q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor, cu_k: Tensor, max_q: int, max_k: int, s: float
) -> Tensor:
    out = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, cu_k, max_q, max_k, 0.0, True, False, scale=s
    )
    return out[0]


def select_attention() -> VarlenAttention:
    """flash_attn's varlen kernel if the package is installed, else PyTorch's own copy."""
    try:
        flash_attn = importlib.import_module("flash_attn")
    except ImportError:
        flash_attn = None
    if flash_attn is not None:
        fa_varlen = flash_attn.flash_attn_varlen_func

        def _fa(
            q: Tensor,
            k: Tensor,
            v: Tensor,
            cu_q: Tensor,
            cu_k: Tensor,
            max_q: int,
            max_k: int,
            s: float,
        ) -> Tensor:
            return fa_varlen(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=s, causal=True)

        version = getattr(flash_attn, "__version__", "?")
        return VarlenAttention(f"flash_attn {version} flash_attn_varlen_func", _fa)
    if not hasattr(torch.ops.aten, "_flash_attention_forward"):
        raise ConfigError("this PyTorch has no FlashAttention kernel and flash_attn is missing")
    return VarlenAttention(
        "torch.ops.aten._flash_attention_forward (FlashAttention-2 varlen in PyTorch)", _aten_flash
    )


def check_attention(
    attn: VarlenAttention, q_heads: int, kv_heads: int, head_dim: int
) -> tuple[VarlenAttention, float]:
    """Check a mixed prefill/decode varlen batch against float64 math, with q as a strided view
    first (falling back to contiguous inputs if the kernel refuses views). Returns the kernel as
    it will be used and its relative error; raises if it is wrong (its timings would be
    worthless)."""
    try:
        return attn, _attention_error(attn, q_heads, kv_heads, head_dim, strided=True)
    except RuntimeError as e:
        logger.warning("%s refuses strided q, copying it to contiguous: %s", attn.name, e)
    attn = replace(attn, strided_ok=False)
    return attn, _attention_error(attn, q_heads, kv_heads, head_dim, strided=False)


def _attention_error(
    attn: VarlenAttention, q_heads: int, kv_heads: int, head_dim: int, strided: bool
) -> float:
    seqs = [(37, 50), (1, 100), (64, 0), (1, 7), (128, 129)]  # (new tokens, cached tokens)
    total_q = sum(n for n, _ in seqs)
    q_all = torch.randn(q_heads, total_q, head_dim, device="cuda", dtype=torch.bfloat16)
    q_all = q_all.transpose(0, 1) if strided else q_all.transpose(0, 1).contiguous()
    qs, ks, vs, offset = [], [], [], 0
    for new, cached in seqs:
        qs.append(q_all[offset : offset + new])
        offset += new
        ks.append(torch.randn(new + cached, kv_heads, head_dim, device="cuda").bfloat16())
        vs.append(torch.randn(new + cached, kv_heads, head_dim, device="cuda").bfloat16())
    cu_q = torch.tensor([0, *_cumsum([n for n, _ in seqs])], device="cuda", dtype=torch.int32)
    cu_k = torch.tensor([0, *_cumsum([n + c for n, c in seqs])], device="cuda", dtype=torch.int32)
    scale = head_dim**-0.5
    out = attn(
        attn.prepare(q_all),
        torch.cat(ks),
        torch.cat(vs),
        cu_q,
        cu_k,
        max(n for n, _ in seqs),
        max(n + c for n, c in seqs),
        scale,
    )
    refs = []
    group = q_heads // kv_heads
    for (new, cached), q, k, v in zip(seqs, qs, ks, vs, strict=True):
        qd = q.double().transpose(0, 1)  # heads, new, dim
        kd = k.double().repeat_interleave(group, dim=1).transpose(0, 1)
        vd = v.double().repeat_interleave(group, dim=1).transpose(0, 1)
        scores = qd @ kd.transpose(1, 2) * scale
        row = torch.arange(new, device="cuda").unsqueeze(1)
        col = torch.arange(new + cached, device="cuda").unsqueeze(0)
        scores = scores.masked_fill(col > row + cached, float("-inf"))
        refs.append((scores.softmax(-1) @ vd).transpose(0, 1))
    err = _rel_err(out, torch.cat(refs))
    if not err < 2e-2:
        raise ConfigError(f"{attn.name} disagrees with reference attention (rel. error {err:.3g})")
    return err


def _cumsum(values: list[int]) -> list[int]:
    total, out = 0, []
    for v in values:
        total += v
        out.append(total)
    return out
