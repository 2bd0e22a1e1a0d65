"""Batch execution time of one engine step, from measured operator tables.

A step's time is `num_layers x (non-attention layer time(T) + attention) + overheads`, where T is
the number of tokens in the batch; with tensor parallelism the non-attention time includes the
layer's two all-reduces of T x hidden values (Vidur's collective tables). The non-attention
part comes from Vidur-format `mlp.csv` profiles, turned once into a lookup table indexed by T
(so a query is O(1)). Attention comes from a measured `attention.csv` when the project has one
for this (GPU, model), otherwise from an analytic roofline model that every output labels
`analytic-roofline`.
"""

from __future__ import annotations

import bisect
import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from block.errors import ConfigError
from block.simulator import profiles
from block.simulator.hardware import GpuSpec, get_gpu
from block.simulator.models import ModelShape, get_model

ANALYTIC_ATTENTION = "analytic-roofline"


class AttentionModel(Protocol):
    """Per-layer attention timings on one tensor-parallel shard, in seconds."""

    @property
    def label(self) -> str: ...

    def prefill_s(self, chunk_tokens: int, kv_before: int) -> float: ...

    def decode_s(self, num_seqs: int, kv_total: int) -> float: ...

    def kv_save_s(self, num_tokens: int) -> float: ...


def prefill_pairs(chunk_tokens: int, kv_before: int) -> float:
    """(query, key) pairs of a causal prefill chunk: each new token sees the cached prefix plus
    the earlier tokens of its own chunk (half the chunk on average)."""
    return chunk_tokens * (kv_before + (chunk_tokens + 1) / 2)


@dataclass(frozen=True, slots=True)
class RooflineAttention:
    """Attention from first principles: prefill is compute-bound, decode is bandwidth-bound.

    Efficiencies are the fractions of data-sheet peak that FlashAttention-2 / paged-attention
    kernels typically reach on Ampere/Hopper; fixed costs cover kernel launch and tails. This
    model stands in until the GPU profiler measures real tables for a (GPU, model) pair.
    """

    flops_per_token_pair: float  # 4 * q_heads * head_dim on one shard (QK^T and PV)
    kv_bytes_per_token: float  # K and V of one token in one layer on one shard
    peak_flops: float
    bandwidth: float
    prefill_efficiency: float = 0.5
    decode_efficiency: float = 0.6
    fixed_s: float = 8e-6
    per_seq_s: float = 0.15e-6
    label: str = ANALYTIC_ATTENTION

    def prefill_s(self, chunk_tokens: int, kv_before: int) -> float:
        pairs = prefill_pairs(chunk_tokens, kv_before)
        compute = pairs * self.flops_per_token_pair / (self.peak_flops * self.prefill_efficiency)
        memory = (kv_before + chunk_tokens) * self.kv_bytes_per_token / self.bandwidth
        return max(compute, memory) + self.fixed_s

    def decode_s(self, num_seqs: int, kv_total: int) -> float:
        read = kv_total * self.kv_bytes_per_token / (self.bandwidth * self.decode_efficiency)
        return read + self.fixed_s + self.per_seq_s * num_seqs

    def kv_save_s(self, num_tokens: int) -> float:
        return num_tokens * self.kv_bytes_per_token / self.bandwidth + 2e-6


class _Curve:
    """Piecewise-linear function of one variable with linear extrapolation at the ends."""

    __slots__ = ("xs", "ys")

    def __init__(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        # Tables may repeat an x (several measurements): average them, or the slope divides
        # by zero.
        sums: dict[float, list[float]] = {}
        for x, y in zip(xs, ys, strict=True):
            sums.setdefault(float(x), []).append(float(y))
        self.xs = sorted(sums)
        self.ys = [sum(sums[x]) / len(sums[x]) for x in self.xs]

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if len(xs) == 1:
            return ys[0]
        i = bisect.bisect_right(xs, x)
        i = min(max(i, 1), len(xs) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))


class _Surface:
    """f(a, b) on a grid: linear in b along each measured a, then linear across a."""

    __slots__ = ("curves", "keys")

    def __init__(self, rows: np.ndarray) -> None:
        by_a: dict[float, tuple[list[float], list[float]]] = {}
        for a, b, y in rows:
            xs, ys = by_a.setdefault(float(a), ([], []))
            xs.append(float(b))
            ys.append(float(y))
        if not by_a:
            raise ConfigError("attention table has no rows for this kind of step")
        self.keys = sorted(by_a)
        self.curves = [_Curve(*by_a[k]) for k in self.keys]

    def __call__(self, a: float, b: float) -> float:
        keys = self.keys
        if len(keys) == 1:
            return self.curves[0](b)
        i = bisect.bisect_right(keys, a)
        i = min(max(i, 1), len(keys) - 1)
        a0, a1 = keys[i - 1], keys[i]
        y0, y1 = self.curves[i - 1](b), self.curves[i](b)
        return max(0.0, y0 + (y1 - y0) * (a - a0) / (a1 - a0))


class TableAttention:
    """Attention from a measured attention.csv (interpolated, extrapolated linearly)."""

    def __init__(self, table: profiles.AttentionTable) -> None:
        self.label = f"measured:{table.source}"
        self._prefill = _Surface(table.prefill)
        self._decode = _Surface(table.decode)
        self._save = _Curve(table.kv_save[:, 0].tolist(), table.kv_save[:, 1].tolist())

    def prefill_s(self, chunk_tokens: int, kv_before: int) -> float:
        return self._prefill(chunk_tokens, kv_before)

    def decode_s(self, num_seqs: int, kv_total: int) -> float:
        return self._decode(num_seqs, kv_total / max(num_seqs, 1))

    def kv_save_s(self, num_tokens: int) -> float:
        return self._save(num_tokens)


@dataclass(frozen=True, slots=True)
class Overheads:
    """CPU-side cost per engine step that the GPU tables do not see (scheduling, sampling)."""

    step_s: float = 0.0
    per_seq_s: float = 0.0

    @classmethod
    def read(cls, path: Path | None) -> Overheads:
        if path is None:
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls(
                float(data["step_overhead_ms"]) / 1e3, float(data["per_seq_overhead_ms"]) / 1e3
            )
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"cannot read overheads {path}: {e}") from e


class LatencyModel:
    """Answers "how long does this batch take?" in O(1) after a one-time table build."""

    def __init__(
        self,
        model: ModelShape,
        gpu: GpuSpec,
        tensor_parallel: int,
        mlp: profiles.MlpTable,
        attention: AttentionModel,
        overheads: Overheads = Overheads(),
        max_batch_tokens: int = 65536,
        compat: str = "none",
        mixed_decode: _Surface | None = None,
        all_reduce: profiles.CollectiveTable | None = None,
    ) -> None:
        self.model = model
        self.gpu = gpu
        self.tensor_parallel = tensor_parallel
        self.mlp_source = mlp.source
        self.attention = attention
        self.overheads = overheads
        self.num_layers = model.num_layers
        grid = np.arange(max_batch_tokens + 1, dtype=float)
        lut = np.interp(grid, mlp.num_tokens.astype(float), mlp.layer_time_s)
        # Beyond the largest measured batch, extend along the last measured slope.
        tail = mlp.num_tokens[-1]
        if tail < max_batch_tokens and len(mlp.num_tokens) > 3:
            # Large batches are compute-bound, so time is linear in tokens there: fit the slope
            # over the top quarter of the table rather than trusting two noisy end points.
            top = mlp.num_tokens >= mlp.num_tokens[-1] * 3 // 4
            slope = float(np.polyfit(mlp.num_tokens[top], mlp.layer_time_s[top], 1)[0])
            lut[tail:] = mlp.layer_time_s[-1] + slope * (grid[tail:] - tail)
        # Tensor parallelism: Vidur's mlp.csv times one shard's operators only; each layer
        # also all-reduces its attention output and its MLP output (tokens x hidden values).
        self.all_reduce_source = all_reduce.source if all_reduce and tensor_parallel > 1 else None
        if all_reduce is not None and tensor_parallel > 1:
            message = grid * model.hidden_size * model.dtype_bytes
            lut += 2 * all_reduce.at(message)
        lut[0] = 0.0
        # A list for the hot paths (indexing a list is several times faster than an array);
        # the array for `rebuilt`, which would otherwise convert 65k floats back each refit.
        self._mlp_array = lut
        self._mlp_lut: list[float] = lut.tolist()
        self._max_tokens = max_batch_tokens
        if compat not in ("none", "vidur"):
            raise ConfigError(f"unknown latency compatibility mode {compat!r}")
        # "vidur": reproduce Vidur 0.0.26's batch features exactly (token counts rounded up to
        # 8, attention looked up at rounded keys, no KV-cache save), for side-by-side checks.
        self.compat = compat
        self._decode_base: list[float] = []  # per batch size: everything but decode attention
        # Decode attention measured inside launches that also run a prefill chunk (GQA models
        # lose their KV-head sharing there); f(batch, KV per sequence), seconds per layer.
        self.mixed_decode: Callable[[float, float], float] | None = mixed_decode
        # Set on copies fitted to an engine (block.simulator.calibration): their coefficients.
        self.calibration: str | None = None

    @property
    def attention_label(self) -> str:
        return self.attention.label

    def describe(self) -> dict[str, object]:
        return {
            "gpu": self.gpu.name,
            "model": self.model.name,
            "tensor_parallel": self.tensor_parallel,
            "mlp_profile": str(self.mlp_source),
            "all_reduce_profile": str(self.all_reduce_source) if self.all_reduce_source else None,
            "attention_model": self.attention.label,
            "mixed_step_decode_table": self.mixed_decode is not None,
            "step_overhead_s": self.overheads.step_s,
            "per_seq_overhead_s": self.overheads.per_seq_s,
            "calibration": self.calibration,
        }

    def rebuilt(
        self,
        *,
        mlp_scale: float,
        mlp_per_token_s: float,
        attention: AttentionModel,
        overheads: Overheads,
        mixed_decode: Callable[[float, float], float] | None,
        calibration: str,
    ) -> LatencyModel:
        """A copy whose per-layer non-attention time is `mlp_scale x table + mlp_per_token_s x
        tokens`, with new attention, overheads and mixed-launch decode (block.simulator.
        calibration builds them); nothing mutable is shared with `self`."""
        out = copy.copy(self)
        lut = self._mlp_array
        new = mlp_scale * lut + mlp_per_token_s * np.arange(len(lut), dtype=float)
        new[0] = 0.0
        out._mlp_array = new
        out._mlp_lut = new.tolist()
        out.attention = attention
        out.overheads = overheads
        out.mixed_decode = mixed_decode
        out._decode_base = []
        out.calibration = calibration
        return out

    def mlp_layer_s(self, num_tokens: int) -> float:
        if num_tokens <= self._max_tokens:
            return self._mlp_lut[num_tokens]
        raise ConfigError(f"batch of {num_tokens} tokens exceeds the model's table")

    def step_time_s(
        self,
        num_tokens: int,
        num_decode: int,
        decode_kv_total: int,
        prefill: Sequence[tuple[int, int]] = (),
    ) -> float:
        """Time of one step: `num_decode` decodes reading `decode_kv_total` cached tokens in all,
        plus prefill chunks given as (chunk tokens, tokens already cached before the chunk)."""
        if num_tokens <= 0:
            return 0.0
        if self.compat == "vidur":
            return self._vidur_step_time_s(num_tokens, num_decode, decode_kv_total, prefill)
        attn = self.attention
        layer = self._mlp_lut[num_tokens] + attn.kv_save_s(num_tokens)
        if num_decode:
            mixed = self.mixed_decode
            if prefill and mixed is not None:
                layer += mixed(num_decode, decode_kv_total / num_decode)
            else:
                layer += attn.decode_s(num_decode, decode_kv_total)
        for chunk, kv_before in prefill:
            layer += attn.prefill_s(chunk, kv_before)
        seqs = num_decode + len(prefill)
        return self.num_layers * layer + self.overheads.step_s + self.overheads.per_seq_s * seqs

    def decode_step_s(self, num_decode: int, decode_kv_total: int) -> float:
        """A decode-only step (the hot path of predictions): same as step_time_s."""
        if self.compat != "none":
            return self.step_time_s(num_decode, num_decode, decode_kv_total)
        base = self._decode_base
        while len(base) <= num_decode:
            n = len(base)
            fixed = self._mlp_lut[n] + self.attention.kv_save_s(n) if n else 0.0
            base.append(
                self.num_layers * fixed + self.overheads.step_s + self.overheads.per_seq_s * n
            )
        return base[num_decode] + self.num_layers * self.attention.decode_s(
            num_decode, decode_kv_total
        )

    def _vidur_step_time_s(
        self,
        num_tokens: int,
        num_decode: int,
        decode_kv_total: int,
        prefill: Sequence[tuple[int, int]],
    ) -> float:
        attn = self.attention
        layer = self._mlp_lut[-(-num_tokens // 8) * 8]
        if num_decode:
            # Vidur's decode context counts the token being fed plus the sampled one.
            mean_kv = (decode_kv_total + 2 * num_decode) // num_decode
            layer += attn.decode_s(num_decode, -(-mean_kv // 256) * 256 * num_decode)
        for chunk, kv_before in prefill:
            kv = -(-(kv_before + chunk) // 256) * 256
            layer += attn.prefill_s(-(-chunk // 32) * 32, kv)
        return self.num_layers * layer

    def batch_time_s(self, prefill: Sequence[tuple[int, int]], decode_kv: Sequence[int]) -> float:
        """Convenience form: per-sequence prefill (chunk, kv_before) and decode KV lengths."""
        tokens = sum(c for c, _ in prefill) + len(decode_kv)
        return self.step_time_s(tokens, len(decode_kv), sum(decode_kv), prefill)

    @classmethod
    def load(
        cls,
        gpu: str,
        model: str | ModelShape,
        tensor_parallel: int = 1,
        attention: str = "auto",
        compat: str = "none",
    ) -> LatencyModel:
        """Build from the profiles found for (gpu, model, tp).

        `attention`: "auto" (measured table when one exists, else analytic), "analytic", or a
        path to an attention.csv.
        """
        shape = get_model(model) if isinstance(model, str) else model
        spec = get_gpu(gpu)
        mlp_path = profiles.find_profile_file(spec.name, shape.name, "mlp.csv", tensor_parallel)
        if mlp_path is None:
            roots = ", ".join(str(r) for r in profiles.search_roots())
            raise ConfigError(
                f"no mlp.csv for {shape.name} on {spec.name} with rows for tensor parallel "
                f"{tensor_parallel} under {roots}"
            )
        mlp = profiles.read_mlp_table(mlp_path, tensor_parallel)
        attn_model: AttentionModel
        attn_path: Path | None = None
        mixed: _Surface | None = None
        if attention == "auto":
            attn_path = profiles.find_profile_file(
                spec.name, shape.name, "attention.csv", tensor_parallel
            )
        elif attention != "analytic":
            attn_path = Path(attention)
        if attn_path is not None:
            attn_model = TableAttention(profiles.read_attention_table(attn_path, tensor_parallel))
            mixed_path = attn_path.with_name("attention_mixed.csv")
            if mixed_path.is_file():
                mixed = _Surface(profiles.read_attention_table(mixed_path, tensor_parallel).decode)
        else:
            attn_model = roofline_attention(shape, spec, tensor_parallel)
        overheads_path = profiles.find_profile_file(spec.name, shape.name, "overhead.json")
        overheads = Overheads.read(overheads_path) if compat == "none" else Overheads()
        all_reduce = None
        if tensor_parallel > 1:
            all_reduce = profiles.find_all_reduce(spec.name, tensor_parallel)
            if all_reduce is None:
                roots = ", ".join(str(r) for r in profiles.network_roots())
                raise ConfigError(
                    f"no all_reduce.csv for {tensor_parallel} x {spec.name} under {roots} "
                    "(<gpu>_pairwise_nvlink/ or <gpu>_dgx/): tensor parallelism needs one"
                )
        return cls(
            shape, spec, tensor_parallel, mlp, attn_model, overheads, compat=compat,
            mixed_decode=mixed, all_reduce=all_reduce,
        )  # fmt: skip


def roofline_attention(model: ModelShape, gpu: GpuSpec, tensor_parallel: int) -> RooflineAttention:
    q_heads = max(1, model.num_heads // tensor_parallel)
    kv_heads = max(1, model.num_kv_heads // tensor_parallel)
    peak_flops, bandwidth = gpu.require_roofline()
    return RooflineAttention(
        flops_per_token_pair=4.0 * q_heads * model.head_dim,
        kv_bytes_per_token=2.0 * kv_heads * model.head_dim * model.dtype_bytes,
        peak_flops=peak_flops,
        bandwidth=bandwidth,
    )
