"""The estimator's on-disk artifact: one folder, three files, written by `block estimator train`.

    manifest.json   format version, settings (max_chars, quantiles, feature names), the dataset
                    it was trained on, training figures and the test-split evaluation
    tokenizer.json  the WordPiece tokenizer of all-MiniLM-L6-v2 (Apache-2.0), so serving
                    needs neither the encoder package nor the network
    model.npz       `token_vectors` (float16, weighted), `token_weights`, the model head
                    (`head.*`) and the prompt-length baseline head (`baseline.*`)

The copy shipped in the package lives in `block/estimator/artifact/`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from block.errors import ConfigError
from block.estimator import features, heads

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
ARRAYS = "model.npz"


def default_dir() -> Path:
    """The artifact folder shipped inside the installed package."""
    return Path(str(resources.files("block.estimator").joinpath("artifact")))


@dataclass(frozen=True)
class Artifact:
    """Everything the runtime needs, loaded; read-only."""

    manifest: dict[str, Any]
    tokenizer_path: Path
    table: features.TokenTable
    head: heads.QuantileHead
    baseline: heads.QuantileHead
    prior_log: tuple[float, float, float]

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", "unknown"))


def save(
    folder: Path,
    manifest: dict[str, Any],
    tokenizer_src: Path,
    table: features.TokenTable,
    head: heads.QuantileHead,
    baseline: heads.QuantileHead,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        "token_vectors": table.weighted_vectors,
        "token_weights": table.weights,
    }
    arrays |= {f"head.{k}": v for k, v in head.arrays().items()}
    arrays |= {f"baseline.{k}": v for k, v in baseline.arrays().items()}
    # Written to a temporary name first so a crash never leaves a half-written artifact.
    tmp = folder / (ARRAYS + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(folder / ARRAYS)
    if tokenizer_src.resolve() != (folder / TOKENIZER).resolve():
        shutil.copyfile(tokenizer_src, folder / TOKENIZER)
    digest = hashlib.sha256((folder / ARRAYS).read_bytes()).hexdigest()
    manifest = {**manifest, "format_version": FORMAT_VERSION, "arrays_sha256": digest}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def load(folder: Path | None = None) -> Artifact:
    folder = folder or default_dir()
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        with np.load(folder / ARRAYS) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise ConfigError(f"estimator artifact at {folder} is unreadable: {e}") from e
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"estimator artifact at {folder} has format {manifest.get('format_version')}, "
            f"this code reads {FORMAT_VERSION}: retrain with `block estimator train`"
        )
    if not (folder / TOKENIZER).is_file():
        raise ConfigError(f"estimator artifact at {folder} lacks {TOKENIZER}")

    def sub(prefix: str) -> dict[str, Any]:
        return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}

    try:
        table = features.TokenTable(arrays["token_vectors"], arrays["token_weights"])
        head = heads.QuantileHead.from_arrays(sub("head."))
        baseline = heads.QuantileHead.from_arrays(sub("baseline."))
        prior = tuple(float(v) for v in manifest["prior_log"])
    except (KeyError, TypeError) as e:
        raise ConfigError(f"estimator artifact at {folder} is incomplete: missing {e}") from e
    if len(prior) != 3:
        raise ConfigError(f"estimator artifact at {folder}: prior_log needs three quantiles")
    return Artifact(
        manifest, folder / TOKENIZER, table, head, baseline, (prior[0], prior[1], prior[2])
    )
