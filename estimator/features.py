"""Prompt features for the estimator: pooled distilled token vectors plus surface statistics.

A prompt becomes one row of floats:

* the weighted mean of its WordPieces' vectors from a `TokenTable` (the MiniLM encoder run on
  each vocabulary entry alone, reduced by PCA; weights a / (a + p(token)) with p the token's
  frequency in training prompts, so filler tokens count little), and
* four surface statistics: log(1 + WordPieces), log(1 + characters), log(1 + lines) and the
  extra UTF-8 bytes per character (the script the prompt is written in: the reply's Llama-3
  token count depends on its language).

Work per prompt is one tokenizer call and a gather over at most `max_chars` characters, which
is what keeps serving within the latency budget without the encoder's attention layers.
Prompts longer than `max_chars` are cut to it (the statistics then saturate; nothing fails).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
NUM_SURFACE = 4
SURFACE_NAMES = ("log_wordpieces", "log_chars", "log_lines", "utf8_extra_bytes_per_char")
DEFAULT_MAX_CHARS = 16384
SIF_A = 1e-3


def length_features(rows: FloatArray) -> FloatArray:
    """The prompt-length baseline's inputs: log(1 + WordPieces) and its square.

    Takes feature rows whose last `NUM_SURFACE` columns are the surface statistics.
    """
    n = rows[:, -NUM_SURFACE : -NUM_SURFACE + 1]
    return np.concatenate([n, n * n], axis=1).astype(np.float32)


@dataclass(frozen=True)
class TokenTable:
    """Per-WordPiece vectors already multiplied by their weight, and the weights themselves."""

    weighted_vectors: npt.NDArray[np.float16]  # (vocab, dim)
    weights: FloatArray  # (vocab,)

    @property
    def dim(self) -> int:
        return int(self.weighted_vectors.shape[1])

    @classmethod
    def build(
        cls,
        raw_vectors: FloatArray,
        token_counts: npt.NDArray[np.int64],
        dim: int,
        special_ids: Sequence[int] = (),
    ) -> tuple[TokenTable, FloatArray, FloatArray]:
        """PCA-reduce `raw_vectors` to `dim` and attach frequency weights.

        Returns the table plus the PCA mean and components, so callers can record them.
        """
        mean = raw_vectors.mean(0)
        centred = raw_vectors - mean
        # SVD of the 384x384 covariance is cheap and exact enough for a projection.
        cov = centred.T @ centred / len(centred)
        _, eigvecs = np.linalg.eigh(cov.astype(np.float64))
        components = eigvecs[:, ::-1][:, :dim].astype(np.float32)
        reduced = centred @ components
        prob = (token_counts.astype(np.float64) + 1.0) / float(
            token_counts.sum() + len(token_counts)
        )
        weights = (SIF_A / (SIF_A + prob)).astype(np.float32)
        weights[list(special_ids)] = 0.0
        table = cls((reduced * weights[:, None]).astype(np.float16), weights)
        return table, mean.astype(np.float32), components


class Featurizer:
    """Turns prompts into feature rows; immutable after construction, safe to share."""

    def __init__(
        self, tokenizer_path: Path, table: TokenTable | None, max_chars: int = DEFAULT_MAX_CHARS
    ) -> None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # The shipped tokenizer.json pads and truncates to 128 for sentence-transformers; we
        # want every WordPiece (the text is already cut to max_chars) and no padding.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        self._table = table
        self.max_chars = max_chars

    @property
    def num_features(self) -> int:
        return (self._table.dim if self._table is not None else 0) + NUM_SURFACE

    def token_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """WordPiece ids (no [CLS]/[SEP]) of each prompt, after cutting it to `max_chars`."""
        texts = [p[: self.max_chars] for p in prompts]
        if len(texts) == 1:
            return [self._tokenizer.encode(texts[0], add_special_tokens=False).ids]
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def transform(self, prompts: Sequence[str]) -> FloatArray:
        ids_list = self.token_ids(prompts)
        out = np.zeros((len(prompts), self.num_features), dtype=np.float32)
        for row, (prompt, ids) in enumerate(zip(prompts, ids_list, strict=True)):
            text = prompt[: self.max_chars]
            if self._table is not None and ids:
                idx = np.asarray(ids, dtype=np.int64)
                total = float(self._table.weights[idx].sum())
                if total > 0.0:
                    pooled = self._table.weighted_vectors[idx].sum(0, dtype=np.float32)
                    out[row, : self._table.dim] = pooled / total
            n_chars = len(text)
            # Extra UTF-8 bytes per character: 0 for ASCII, ~1 for Cyrillic, ~2 for CJK; a
            # C-speed stand-in for "which script", which moves the reply's Llama-3 count.
            extra_bytes = len(text.encode("utf-8", "replace")) - n_chars
            out[row, -NUM_SURFACE:] = (
                np.log1p(len(ids)),
                np.log1p(n_chars),
                np.log1p(text.count("\n")),
                extra_bytes / n_chars if n_chars else 0.0,
            )
        return out

    def token_counts(self, prompts: Sequence[str], vocab_size: int) -> npt.NDArray[np.int64]:
        """How often each WordPiece occurs in `prompts` (for the frequency weights)."""
        counts = np.zeros(vocab_size, dtype=np.int64)
        for ids in self.token_ids(prompts):
            np.add.at(counts, np.asarray(ids, dtype=np.int64), 1)
        return counts
