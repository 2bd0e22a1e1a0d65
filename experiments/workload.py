"""ShareGPT workloads with the router's length beliefs: what every experiment replays.

Requests come from held-out ShareGPT conversations (first human turn, first model reply, Llama-3
token counts, `block.simulator.workloads`) so that the length estimator, trained on the other
conversations, never saw them. Each request carries two output lengths: the true one (what the
simulated engine generates) and the estimate the router believes. The estimate comes from:

* `estimator`: the shipped length estimator (`block.estimator.LengthEstimator`) reading the
  prompt text, its median (p50) tokens;
* `prompt-median` (fallback when no estimator artifact is installed): the median reply length of
  training conversations whose prompt length falls in the same power-of-two bucket. It reads the
  prompt's length only, never its text; reports name which one was used.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from block.errors import BlockError
from block.simulator import workloads
from block.simulator.requests import Request

logger = logging.getLogger(__name__)

ESTIMATOR = "estimator"
PROMPT_MEDIAN = "prompt-median"


@dataclass(frozen=True)
class Conversation:
    """One held-out ShareGPT conversation: sizes, its text and the router's length belief."""

    conversation_id: str
    prompt: str
    prompt_tokens: int
    output_tokens: int
    estimated_tokens: int


@dataclass(frozen=True)
class Pool:
    """Held-out conversations to draw requests from, and how their estimates were made."""

    conversations: tuple[Conversation, ...]
    estimate_source: str
    notes: dict[str, str] = field(default_factory=dict)


def split_of(conversation_id: str) -> str:
    """The estimator's split rule (train/val/test by a hash of the conversation id).

    Uses `block.estimator.datasets.split_of` when present so that held-out means held out from
    the shipped estimator; the fallback hashes the same way.
    """
    try:
        from block.estimator.datasets import split_of as estimator_split
    except ImportError:
        base = conversation_id.rsplit("_", 1)[0] if "_" in conversation_id else conversation_id
        bucket = int.from_bytes(hashlib.sha256(base.encode()).digest()[:8], "big") % 100
        return "train" if bucket < 80 else ("val" if bucket < 90 else "test")
    return str(estimator_split(conversation_id))


class PromptMedian:
    """Median reply length per power-of-two prompt-length bucket (length-only fallback)."""

    def __init__(self, prompt_tokens: Sequence[int], output_tokens: Sequence[int]) -> None:
        buckets: dict[int, list[int]] = {}
        for p, o in zip(prompt_tokens, output_tokens, strict=True):
            buckets.setdefault(int(p).bit_length(), []).append(int(o))
        overall = int(np.median(np.asarray(output_tokens)))
        # Thin buckets borrow the overall median rather than a handful of outliers.
        self._medians = {
            b: int(np.median(v)) if len(v) >= 20 else overall for b, v in buckets.items()
        }
        self._keys = sorted(self._medians)
        self._overall = overall

    def __call__(self, prompt_tokens: int) -> int:
        b = int(prompt_tokens).bit_length()
        if b in self._medians:
            return self._medians[b]
        i = min(bisect.bisect_left(self._keys, b), len(self._keys) - 1)
        return self._medians.get(self._keys[i], self._overall) if self._keys else self._overall


def load_pool(max_model_len: int, source: str = "auto") -> Pool:
    """Held-out (test-split) ShareGPT conversations with length estimates.

    `source`: `estimator`, `prompt-median` or `auto` (the estimator if its artifact loads).
    """
    turns = workloads.sharegpt_first_turns()
    lengths = workloads.sharegpt_lengths()
    if len(turns) != len(lengths):
        raise BlockError(
            f"ShareGPT texts ({len(turns)}) and cached lengths ({len(lengths)}) disagree; "
            "delete the length cache in ~/.cache/block and retry"
        )
    splits = [split_of(cid) for cid, _, _ in turns]
    held = [
        i for i, s in enumerate(splits) if s == "test" and int(lengths[i, 0]) + 1 < max_model_len
    ]
    notes: dict[str, str] = {}
    estimates: list[int] | None = None
    used = PROMPT_MEDIAN
    if source in ("auto", ESTIMATOR):
        try:
            from block.estimator import LengthEstimator

            est = LengthEstimator.load_default()
            estimates = [x.p50_tokens for x in est.estimate([turns[i][1] for i in held])]
            used = ESTIMATOR
            notes["estimator"] = est.name
        except (ImportError, BlockError) as e:
            if source == ESTIMATOR:
                raise BlockError(f"the length estimator is unavailable: {e}") from e
            notes["estimator_unavailable"] = str(e)
            logger.warning("length estimator unavailable (%s); using prompt-median", e)
    if estimates is None:
        train = [i for i, s in enumerate(splits) if s == "train"]
        model = PromptMedian(lengths[train, 0].tolist(), lengths[train, 1].tolist())
        estimates = [model(int(lengths[i, 0])) for i in held]
    convs = []
    for i, guess in zip(held, estimates, strict=True):
        fitted = workloads.fit_lengths(int(lengths[i, 0]), int(lengths[i, 1]), max_model_len)
        if fitted is None:
            continue
        p, o = fitted
        convs.append(
            Conversation(turns[i][0], turns[i][1], p, o, max(1, min(guess, max_model_len - p)))
        )
    return Pool(tuple(convs), used, notes)


@dataclass(frozen=True)
class Workload:
    """Requests in arrival order plus, per request id, the router's length belief."""

    requests: list[Request]
    estimates: dict[int, int]
    prompts: dict[int, str]

    def guess(self, req: Request) -> int:
        return self.estimates.get(req.rid, req.output_tokens)


def draw(pool: Pool, times: Sequence[float], seed: int) -> Workload:
    """One request per arrival time, conversations drawn uniformly with replacement."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(pool.conversations), size=len(times))
    reqs, est, prompts = [], {}, {}
    for rid, (t, k) in enumerate(zip(times, picks, strict=True)):
        c = pool.conversations[int(k)]
        reqs.append(Request(rid, float(t), c.prompt_tokens, c.output_tokens))
        est[rid] = c.estimated_tokens
        prompts[rid] = c.prompt
    return Workload(reqs, est, prompts)


def poisson(pool: Pool, n: int, qps: float, seed: int, cv: float = 1.0) -> Workload:
    """`n` requests at `qps` (Poisson, or Gamma gaps with coefficient of variation `cv`)."""
    return draw(pool, workloads.arrivals(n, qps, random.Random(seed), cv), seed)


def scaled(wl: Workload, factor: float) -> Workload:
    """The same requests with arrival times divided by `factor` (a higher QPS)."""
    reqs = [Request(r.rid, r.arrival_s / factor, r.prompt_tokens, r.output_tokens)
            for r in wl.requests]  # fmt: skip
    return Workload(reqs, wl.estimates, wl.prompts)


def estimate_error(pool: Pool) -> dict[str, float]:
    """How good the router's beliefs are on the pool: MAE and median relative error."""
    true = np.array([c.output_tokens for c in pool.conversations], dtype=float)
    est = np.array([c.estimated_tokens for c in pool.conversations], dtype=float)
    return {
        "mae_tokens": float(np.mean(np.abs(est - true))),
        "median_abs_rel_error": float(np.median(np.abs(est - true) / true)),
        "within_50_tokens": float(np.mean(np.abs(est - true) <= 50)),
    }
