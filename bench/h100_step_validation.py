"""Real-GPU check of the simulator's step latency model.

Two halves, run on two machines:

`measure` (on the GPU machine, needs torch and transformers): builds transformers' Llama
(`LlamaForCausalLM`, random bf16 weights, every layer of the catalogue shape unless `--layers` says
fewer) and runs it on mixed engine steps: prefill chunks and decode sequences packed into one
varlen batch, each sequence with its own KV cache (already holding `kv_before` tokens), batch
sizes 1-128. Each step is timed three ways:
  * `eager_ms`: plain PyTorch forward, CUDA events (includes Python/launch gaps);
  * `graph_gpu_ms`: the same forward captured in a CUDA graph, replayed (GPU time only);
  * `measured_ms`: an engine-like step around the graph, host clock: build the step's inputs on
    the CPU, copy them in, replay, read the sampled tokens back.
The time outside the transformer layers (`measured_ms` minus the layers' GPU time; the layers'
GPU time is the graph time minus a zero-layer graph of embedding, final norm, LM head and
sampling) is fitted as `step + per_seq * num_seqs` on a separate calibration set of steps and
written as `overhead.json`, which the latency model adds to every step.

`predict` (on any machine): reads those measurements, asks `block.simulator.latency` for each
step's predicted time, and writes `bench/results/h100_step_validation.csv` plus a summary.

    # GPU machine (tools/gpu-namespace.sh puts block.* on the path without installing it)
    PYTHONPATH=$(tools/gpu-namespace.sh) python3 bench/h100_step_validation.py measure \
        --model meta-llama/Llama-2-7b-hf --out $OUT/steps.csv --overhead-out $OUT/overhead.json
    # here
    .venv/bin/python bench/h100_step_validation.py predict --measurements steps.csv \
        --model meta-llama/Llama-2-7b-hf --out bench/results/h100_step_validation.csv
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("h100_step_validation")

MAX_CONTEXT = 4096
KV_BUDGET_TOKENS = 65536  # total cached tokens one step may touch (sizes the KV cache)
ATTN_NAME = "block_varlen"


Chunk = tuple[int, int]  # (chunk tokens, tokens cached before the chunk)


@dataclass(frozen=True, slots=True)
class Step:
    """One engine step: prefill chunks as (chunk tokens, cached before) and decode KV lengths."""

    step_id: int
    subset: str  # "calibration" or "validation"
    kind: str  # "decode", "prefill" or "mixed"
    prefill: tuple[tuple[int, int], ...]
    decode_kv: tuple[int, ...]

    @property
    def seqs(self) -> list[tuple[int, int]]:
        """(new tokens, cached tokens) per sequence, prefills first."""
        return [*self.prefill, *((1, kv) for kv in self.decode_kv)]

    @property
    def num_tokens(self) -> int:
        return sum(new for new, _ in self.seqs)

    @property
    def kv_tokens(self) -> int:
        """Tokens in the KV cache after this step, over all its sequences."""
        return sum(new + kv for new, kv in self.seqs)


def make_steps(seed: int = 7) -> list[Step]:
    """Calibration (decode-only, for the overhead fit) and validation steps (mixed)."""
    rng = random.Random(seed)
    batches = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 80, 96, 112, 128)

    def decode_kvs(n: int, budget: int) -> tuple[int, ...]:
        cap = min(MAX_CONTEXT - 1, max(16, budget // max(n, 1) - 1))
        return tuple(int(min(cap, max(16, rng.lognormvariate(6.3, 0.9)))) for _ in range(n))

    def chunk() -> tuple[int, int]:
        size = rng.choice((32, 64, 128, 200, 256, 384, 512, 768, 1024, 1536, 2048))
        before = rng.choice((0, 0, 128, 512, 1000, 1536, 2048, 3000))
        return size, min(before, MAX_CONTEXT - size)

    steps: list[Step] = []

    def add(subset: str, kind: str, prefill: list[Chunk], decode: tuple[int, ...]) -> None:
        steps.append(Step(len(steps), subset, kind, tuple(prefill), decode))

    for i in range(16):
        add("calibration", "decode", [], decode_kvs(batches[i % len(batches)], KV_BUDGET_TOKENS))
    for i in range(22):
        n = batches[(i * 5) % len(batches)]
        add("validation", "decode", [], decode_kvs(n, KV_BUDGET_TOKENS))
    for _ in range(12):
        add("validation", "prefill", [chunk() for _ in range(rng.randint(1, 3))], ())
    for i in range(36):
        prefill = [chunk() for _ in range(rng.choice((1, 1, 2)))]
        used = sum(c + kv for c, kv in prefill)
        n = batches[(i * 3) % len(batches)]
        add("validation", "mixed", prefill, decode_kvs(n, KV_BUDGET_TOKENS - used))
    for s in steps:
        assert s.kv_tokens <= KV_BUDGET_TOKENS and all(c + kv <= MAX_CONTEXT for c, kv in s.seqs)
    return steps


# ----------------------------------------------------------------------------------- measure


def measure(args: argparse.Namespace) -> int:
    import torch
    import transformers
    from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM
    from transformers.models.llama import modeling_llama

    from block.profiler import ops
    from block.simulator.models import get_model

    shape = get_model(args.model)
    layers = args.layers or shape.num_layers
    torch.manual_seed(0)
    fused = ops.make_fused_ops(not args.no_compile)
    attn = ops.select_attention()
    hkv, d = shape.num_kv_heads, shape.head_dim
    attn, _ = ops.check_attention(attn, shape.num_heads, hkv, d)

    class VarlenAttention:
        """transformers attention interface -> KV-cache save + FlashAttention varlen."""

        def __init__(self, k_cache: list[Any], v_cache: list[Any]) -> None:
            self.k_cache, self.v_cache = k_cache, v_cache
            self.calls = 0
            self.batch: dict[str, Any] = {}

        def __call__(
            self,
            module: Any,
            query: Any,
            key: Any,
            value: Any,
            attention_mask: Any,
            dropout: float = 0.0,
            scaling: float | None = None,
            **kwargs: Any,
        ) -> tuple[Any, None]:
            b = self.batch
            kc, vc = self.k_cache[module.layer_idx], self.v_cache[module.layer_idx]
            q = attn.prepare(query[0].transpose(0, 1))  # (tokens, heads, dim), a view if it can
            k = attn.prepare(key[0].transpose(0, 1))
            v = attn.prepare(value[0].transpose(0, 1))
            kc.index_copy_(0, b["slots"], k)
            vc.index_copy_(0, b["slots"], v)
            total_k = b["total_k"]
            out = attn(
                q, kc[:total_k], vc[:total_k], b["cu_q"], b["cu_k"], b["max_q"], b["max_k"],
                scaling if scaling is not None else d**-0.5,
            )  # fmt: skip
            self.calls += 1
            return out.unsqueeze(0), None

    capacity = KV_BUDGET_TOKENS + 64
    k_cache = [torch.randn(capacity, hkv, d, device="cuda").bfloat16() for _ in range(layers)]
    v_cache = [torch.randn(capacity, hkv, d, device="cuda").bfloat16() for _ in range(layers)]
    varlen = VarlenAttention(k_cache, v_cache)
    AttentionInterface.register(ATTN_NAME, varlen)
    # Serving engines fuse the elementwise ops; route transformers' Llama through the same
    # compiled kernels the profiler timed (same math as transformers' own functions).
    modeling_llama.LlamaRMSNorm.forward = lambda self, x: fused.rms_norm(
        x, self.weight, self.variance_epsilon
    )
    modeling_llama.LlamaMLP.forward = lambda self, x: self.down_proj(
        fused.silu_mul(self.gate_proj(x), self.up_proj(x))
    )
    modeling_llama.apply_rotary_pos_emb = lambda q, k, cos, sin, *a, **kw: fused.rope(
        q, k, cos, sin
    )
    config = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=hkv,
        max_position_embeddings=shape.max_model_len,
        tie_word_embeddings=False,
    )
    model = None
    tried = []
    with torch.device("cuda"):
        # transformers renamed torch_dtype to dtype (4.56) and validates attention names; try
        # the forms in turn, and route attention through the config afterwards if need be.
        for kwargs in (
            {"attn_implementation": ATTN_NAME, "dtype": torch.bfloat16},
            {"attn_implementation": ATTN_NAME, "torch_dtype": torch.bfloat16},
            {"dtype": torch.bfloat16},
            {"torch_dtype": torch.bfloat16},
        ):
            try:
                model = LlamaForCausalLM._from_config(config, **kwargs)
                break
            except (TypeError, ValueError) as e:
                tried.append(f"{sorted(kwargs)}: {e}")
    if model is None:
        raise RuntimeError(f"cannot build LlamaForCausalLM: {tried}")
    model = model.to(torch.bfloat16)
    model.eval()
    with torch.no_grad():  # explicit random init: never time uninitialised (or zero) weights
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)
    if model.config._attn_implementation != ATTN_NAME:
        model.config._attn_implementation = ATTN_NAME  # attention reads it at every call
    params = sum(p.numel() for p in model.parameters())
    logger.info(
        "Llama %d layers, %.2fB params, %s on %s, torch %s, transformers %s, attention %s",
        layers, params / 1e9, next(model.parameters()).dtype, torch.cuda.get_device_name(),
        torch.__version__, transformers.__version__, attn.name,
    )  # fmt: skip
    inner = model.model

    def forward(ids: Any, pos: Any, last: Any, num_layers: int) -> Any:
        """LlamaForCausalLM.forward's module calls in order, minus mask building (the varlen
        kernel takes sequence boundaries instead), plus greedy sampling on the GPU."""
        h = inner.embed_tokens(ids)
        pe = inner.rotary_emb(h, pos)
        for layer in inner.layers[:num_layers]:
            out = layer(h, attention_mask=None, position_ids=pos, position_embeddings=pe)
            h = out[0] if isinstance(out, tuple) else out
        h = inner.norm(h)
        return model.lm_head(h[:, last]).argmax(-1)

    def host_inputs(step: Step, tokens: list[list[int]]) -> dict[str, Any]:
        """A step's flat input tensors from per-sequence token lists, as an engine builds them."""
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        cu_q, cu_k, last = [0], [0], []
        for (new, cached), seq_tokens in zip(step.seqs, tokens, strict=True):
            start = cu_k[-1]
            ids.extend(seq_tokens)
            pos.extend(range(cached, cached + new))
            slots.extend(range(start + cached, start + cached + new))
            cu_q.append(cu_q[-1] + new)
            cu_k.append(start + cached + new)
            last.append(cu_q[-1] - 1)
        return {
            "ids": torch.tensor([ids]),
            "pos": torch.tensor([pos]),
            "slots": torch.tensor(slots),
            "cu_q": torch.tensor(cu_q, dtype=torch.int32),
            "cu_k": torch.tensor(cu_k, dtype=torch.int32),
            "last": torch.tensor(last),
        }

    spin = getattr(torch.cuda, "_sleep", None)

    def gpu_ms(fn: Any, reps: int) -> float:
        times = []
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if spin is not None:
                spin(200_000)  # the GPU is busy while the CPU queues the work: no launch gap
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        return float(statistics.median(times))

    def capture(fn: Any) -> tuple[Any, Any]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        return graph, out

    steps = make_steps(args.seed)
    if args.limit:
        steps = steps[: args.limit]
    rows = []
    rng = random.Random(args.seed)
    t_start = time.perf_counter()

    def run_step(step: Step) -> dict[str, Any]:
        tokens = [[rng.randrange(shape.vocab_size) for _ in range(n)] for n, _ in step.seqs]
        dev = {k: v.cuda() for k, v in host_inputs(step, tokens).items()}
        varlen.batch = {
            "slots": dev["slots"],
            "cu_q": dev["cu_q"],
            "cu_k": dev["cu_k"],
            "max_q": max(n for n, _ in step.seqs),
            "max_k": max(n + c for n, c in step.seqs),
            "total_k": step.kv_tokens,
        }

        def full() -> Any:
            return forward(dev["ids"], dev["pos"], dev["last"], layers)

        def head_only() -> Any:
            return forward(dev["ids"], dev["pos"], dev["last"], 0)

        varlen.calls = 0
        full()
        if varlen.calls != layers:
            raise RuntimeError(f"custom attention ran {varlen.calls} times, not {layers}")
        eager = gpu_ms(full, 3)
        graph, sampled = capture(full)
        graph_gpu = gpu_ms(graph.replay, 10)
        head_graph, _ = capture(head_only)
        head_gpu = gpu_ms(head_graph.replay, 5)
        walls = []
        for _ in range(10):
            t0 = time.perf_counter()
            fresh = host_inputs(step, tokens)  # the engine builds each step's inputs anew
            for key, tensor in fresh.items():
                dev[key].copy_(tensor, non_blocking=True)
            graph.replay()
            sampled.cpu()  # the sampled tokens go back to the host: a sync
            walls.append((time.perf_counter() - t0) * 1e3)
        measured = statistics.median(walls)
        logger.info(
            "step %3d %-8s tokens=%5d seqs=%3d kv=%6d eager=%.2f graph=%.2f wall=%.2f ms",
            step.step_id, step.kind, step.num_tokens, len(step.seqs), step.kv_tokens,
            eager, graph_gpu, measured,
        )  # fmt: skip
        return {
            "step_id": step.step_id,
            "subset": step.subset,
            "kind": step.kind,
            "prefill": ";".join(f"{c}:{kv}" for c, kv in step.prefill),
            "decode_kv": ";".join(str(kv) for kv in step.decode_kv),
            "prefill_tokens": sum(c for c, _ in step.prefill),
            "prefill_seqs": len(step.prefill),
            "decode_seqs": len(step.decode_kv),
            "kv_tokens": step.kv_tokens,
            "num_tokens": step.num_tokens,
            "layers": layers,
            "eager_ms": round(eager, 4),
            "graph_gpu_ms": round(graph_gpu, 4),
            "nonlayer_gpu_ms": round(head_gpu, 4),
            "measured_ms": round(measured, 4),
        }

    with torch.inference_mode():
        for step in steps:
            rows.append(run_step(step))
            torch.cuda.empty_cache()  # the step's graphs are gone; hand their pools back
    logger.info("measured %d steps in %.0f s", len(rows), time.perf_counter() - t_start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    overhead = fit_overhead([r for r in rows if r["subset"] == "calibration"])
    overhead.update(
        {
            "gpu_name": torch.cuda.get_device_name(),
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "attention_kernel": attn.name,
            "attention_q_layout": "strided view" if attn.strided_ok else "contiguous copy",
            "elementwise_ops": fused.mode,
            "model": shape.name,
            "layers": layers,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
    )
    args.overhead_out.write_text(json.dumps(overhead, indent=2, sort_keys=True) + "\n")
    logger.info("overhead: %s", overhead)
    return 0


def _line_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares a + b*x with b >= 0 (a cost cannot shrink with more sequences)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    if b < 0:
        return my, 0.0
    return my - b * mx, b


def fit_overhead(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Split the time outside the layers' GPU work into CPU and non-layer GPU parts, each fitted
    as step + per_seq * num_seqs; their sums are what the latency model adds."""
    seqs = [float(r["decode_seqs"]) + float(r["prefill_seqs"]) for r in rows]
    cpu = [float(r["measured_ms"]) - float(r["graph_gpu_ms"]) for r in rows]
    head = [float(r["nonlayer_gpu_ms"]) for r in rows]
    cpu_a, cpu_b = _line_fit(seqs, cpu)
    head_a, head_b = _line_fit(seqs, head)
    total = [c + h for c, h in zip(cpu, head, strict=True)]
    a, b = cpu_a + head_a, cpu_b + head_b
    resid = [t - (a + b * s) for t, s in zip(total, seqs, strict=True)]
    return {
        "step_overhead_ms": round(a, 4),
        "per_seq_overhead_ms": round(b, 5),
        "cpu_step_ms": round(cpu_a, 4),
        "cpu_per_seq_ms": round(cpu_b, 5),
        "nonlayer_gpu_step_ms": round(head_a, 4),
        "nonlayer_gpu_per_seq_ms": round(head_b, 5),
        "fit_residual_std_ms": round(statistics.pstdev(resid), 4),
        "calibration_steps": len(rows),
        "method": (
            "engine-like step around a CUDA graph of transformers' Llama: host wall time minus "
            "graph GPU time (CPU: input building, copies, launch, sync) plus a zero-layer graph "
            "(embedding, final norm, LM head, greedy sampling); each fitted a + b*num_seqs over "
            "decode-only calibration steps"
        ),
    }


# ----------------------------------------------------------------------------------- predict


def _mixed_decode_surface(gpu: str, model: str) -> Any:
    """Decode attention measured inside mixed launches (profiler's attention_mixed.csv), as the
    latency model's own interpolation of a decode table; None when there is no such table."""
    from block.simulator import latency, profiles

    path = profiles.find_profile_file(gpu, model, "attention_mixed.csv")
    if path is None:
        return None
    table = profiles.read_attention_table(path, 1)
    return latency._Surface(table.decode)


def predict(args: argparse.Namespace) -> int:
    from block.simulator.latency import LatencyModel

    with args.measurements.open(newline="") as f:
        rows = list(csv.DictReader(f))
    lm = LatencyModel.load(args.gpu, args.model, 1)
    mixed = _mixed_decode_surface(args.gpu, args.model)
    out_rows = []
    for r in rows:
        prefill = [tuple(map(int, p.split(":"))) for p in r["prefill"].split(";") if p]
        decode = [int(kv) for kv in r["decode_kv"].split(";") if kv]
        total = lm.batch_time_s(prefill, decode) * 1e3  # type: ignore[arg-type]
        seqs = len(prefill) + len(decode)
        overhead = (lm.overheads.step_s + lm.overheads.per_seq_s * seqs) * 1e3
        tokens = int(r["num_tokens"])
        mlp = lm.num_layers * lm.mlp_layer_s(tokens) * 1e3
        layers_measured = float(r["graph_gpu_ms"]) - float(r["nonlayer_gpu_ms"])
        measured = float(r["measured_ms"])
        with_mixed = total
        if mixed is not None and prefill and decode:
            # Decodes that share a launch with a prefill chunk: the mixed-launch table (the
            # latency model already uses it when the profile has one).
            per_seq_kv = sum(decode) / len(decode)
            swap = mixed(len(decode), per_seq_kv) - lm.attention.decode_s(len(decode), sum(decode))
            if lm.mixed_decode is None:
                with_mixed += lm.num_layers * swap * 1e3
        out_rows.append(
            {
                "step_id": r["step_id"],
                "subset": r["subset"],
                "kind": r["kind"],
                "prefill_tokens": r["prefill_tokens"],
                "decode_seqs": r["decode_seqs"],
                "kv_tokens": r["kv_tokens"],
                "num_tokens": tokens,
                "measured_ms": measured,
                "predicted_ms": round(total, 4),
                "error_pct": round(100 * (total - measured) / measured, 2),
                "predicted_mixed_table_ms": round(with_mixed, 4),
                "error_mixed_table_pct": round(100 * (with_mixed - measured) / measured, 2),
                "measured_layers_gpu_ms": round(layers_measured, 4),
                "predicted_layers_gpu_ms": round(total - overhead, 4),
                "predicted_mlp_ms": round(mlp, 4),
                "predicted_attention_ms": round(total - overhead - mlp, 4),
                "predicted_overhead_ms": round(overhead, 4),
                "measured_eager_ms": r["eager_ms"],
                "measured_graph_gpu_ms": r["graph_gpu_ms"],
            }
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(out_rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(out_rows)
    lines = [
        f"# Step validation: {args.model} on {args.gpu}",
        "",
        f"latency model: {json.dumps(lm.describe())}",
        "",
        "MAPE total: predicted_ms (the latency model as it is) vs measured_ms. With mixed table:",
        "the same, but decodes sharing a step with a prefill chunk timed from attention_mixed.csv.",
        "",
        "| subset | kind | steps | MAPE total % | mean signed err % | MAPE layers-GPU % | "
        "MAPE with mixed table % |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in out_rows:
        groups.setdefault((r["subset"], r["kind"]), []).append(r)
        if r["subset"] == "validation":
            groups.setdefault(("validation", "all"), []).append(r)
    for (subset, kind), rs in sorted(groups.items()):
        mape = statistics.fmean(abs(r["error_pct"]) for r in rs)
        bias = statistics.fmean(r["error_pct"] for r in rs)
        layer_err = statistics.fmean(
            abs(r["predicted_layers_gpu_ms"] / r["measured_layers_gpu_ms"] - 1) * 100 for r in rs
        )
        mape_mixed = statistics.fmean(abs(r["error_mixed_table_pct"]) for r in rs)
        lines.append(
            f"| {subset} | {kind} | {len(rs)} | {mape:.1f} | {bias:+.1f} | {layer_err:.1f} | "
            f"{mape_mixed:.1f} |"
        )
    summary = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(summary)
    sys.stdout.write(summary)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("measure", help="run on the GPU machine")
    m.add_argument("--model", default="meta-llama/Llama-2-7b-hf")
    m.add_argument("--layers", type=int, default=0, help="fewer layers than the model (0: all)")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--overhead-out", type=Path, required=True)
    m.add_argument("--seed", type=int, default=7)
    m.add_argument("--limit", type=int, default=0, help="only the first N steps (smoke test)")
    m.add_argument("--no-compile", action="store_true")
    p = sub.add_parser("predict", help="compare measurements with the latency model")
    p.add_argument("--measurements", type=Path, required=True)
    p.add_argument("--model", default="meta-llama/Llama-2-7b-hf")
    p.add_argument("--gpu", default="h100")
    p.add_argument("--out", type=Path, default=Path("bench/results/h100_step_validation.csv"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return measure(args) if args.mode == "measure" else predict(args)


if __name__ == "__main__":
    sys.exit(main())
