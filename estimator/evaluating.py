"""`block estimator eval`: an artifact's accuracy on the held-out test split, vs the baselines."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from block.estimator import artifacts, datasets, evaluation, features, training

logger = logging.getLogger(__name__)


def evaluate_artifact(
    folder: Path | None,
    cache_dir: Path,
    source: Path | None = None,
    references: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Rebuild (or read from cache) the dataset, predict the test split, report.

    `references` name .npy files of (examples, 3) log-space quantiles in dataset order, such as
    `finetuned_pred.npy` from `estimator/finetune.py`; they are reported under `references`.
    """
    artifact = artifacts.load(folder)
    trained_on = artifact.manifest.get("dataset", {})
    max_reply = int(trained_on.get("max_reply_tokens", datasets.DEFAULT_MAX_REPLY_TOKENS))
    data = datasets.load_or_build(cache_dir, source, max_reply)
    if trained_on and trained_on.get("num_examples") != data.info["num_examples"]:
        logger.warning(
            "the artifact was trained on a dataset of %s examples, this one has %s",
            trained_on.get("num_examples"),
            data.info["num_examples"],
        )
    test = data.split("test")
    if not test:
        raise ValueError("the dataset has no test examples")
    max_chars = int(artifact.manifest.get("max_chars", features.DEFAULT_MAX_CHARS))
    featurizer = features.Featurizer(artifact.tokenizer_path, artifact.table, max_chars)
    x = featurizer.transform([e.prompt for e in test])
    y = np.asarray([e.reply_tokens for e in test], dtype=np.float32)
    preds = training.predict_all(artifact.head, artifact.baseline, artifact.prior_log, x)
    report = training.evaluate(preds, y)
    if references:
        is_test = np.asarray([e.split == "test" for e in data.examples])
        report["references"] = {}
        for name, path in references.items():
            q = np.load(path).astype(np.float32)
            if q.shape != (len(data.examples), 3):
                raise ValueError(
                    f"{path}: shape {q.shape}, expected ({len(data.examples)}, 3) for this dataset"
                )
            report["references"][name] = evaluation.report(q[is_test], y)
    report["artifact"] = artifact.name
    report["dataset"] = {k: data.info[k] for k in ("source", "num_examples", "splits")}
    return report
