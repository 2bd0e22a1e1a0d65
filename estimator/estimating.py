"""The runtime estimator the gateway calls in-process: prompts in, length quantiles out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from block.errors import InvalidRequest
from block.estimator import artifacts, evaluation, features


@dataclass(frozen=True, slots=True)
class Estimate:
    """Predicted reply length in tokens (Llama-3 tokenizer, EOS not counted)."""

    p10_tokens: int
    p50_tokens: int
    p90_tokens: int

    @property
    def median_tokens(self) -> int:
        """The point estimate: the median minimises expected absolute error."""
        return self.p50_tokens


class LengthEstimator:
    """Estimates reply lengths from prompts.

    Holds only read-only arrays and a tokenizer after construction, so one instance can be
    shared by any number of threads; it keeps no per-call state.
    """

    def __init__(self, artifact: artifacts.Artifact, *, use_baseline: bool = False) -> None:
        self._artifact = artifact
        self._use_baseline = use_baseline
        max_chars = int(artifact.manifest.get("max_chars", features.DEFAULT_MAX_CHARS))
        self._featurizer = features.Featurizer(
            artifact.tokenizer_path, None if use_baseline else artifact.table, max_chars
        )
        prior = evaluation.tokens_from_log(np.asarray([artifact.prior_log], dtype=np.float32))[0]
        self._prior = Estimate(int(prior[0]), int(prior[1]), int(prior[2]))

    @classmethod
    def load(cls, folder: Path, *, use_baseline: bool = False) -> LengthEstimator:
        """An estimator from an artifact folder written by `block estimator train`."""
        return cls(artifacts.load(folder), use_baseline=use_baseline)

    @classmethod
    def load_default(cls) -> LengthEstimator:
        """The estimator shipped with the package."""
        return cls(artifacts.load())

    @property
    def name(self) -> str:
        """The artifact's name (changes with every retraining)."""
        return self._artifact.name

    @property
    def max_chars(self) -> int:
        """Prompts are cut to this many characters before they are read."""
        return self._featurizer.max_chars

    @property
    def prior(self) -> Estimate:
        """The length distribution of all training replies: a fallback for unusable prompts."""
        return self._prior

    def estimate(self, prompts: Sequence[str]) -> list[Estimate]:
        """One estimate per prompt, in order.

        Raises `InvalidRequest` for a prompt that is not a string or is empty or whitespace
        only (there is nothing to read; use `prior` if a number is needed anyway). Prompts over
        `max_chars` characters are cut to it, never rejected.
        """
        if isinstance(prompts, str):
            raise InvalidRequest("estimate() takes a list of prompts, not one string")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise InvalidRequest(f"prompt {i} is {type(p).__name__}, not a string")
            if not p.strip():
                raise InvalidRequest(f"prompt {i} is empty")
        if not prompts:
            return []
        x = self._featurizer.transform(prompts)
        head = self._artifact.baseline if self._use_baseline else self._artifact.head
        if self._use_baseline:
            x = features.length_features(x)
        q = evaluation.tokens_from_log(head.predict_log(x))
        return [Estimate(int(a), int(b), int(c)) for a, b, c in q]
