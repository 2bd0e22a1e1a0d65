"""Fitting the step-time model to the engine it describes.

A profile can be wrong for the engine beside it: A100 tables in front of an H100, a stale profile
after an engine upgrade, a GPU profile in front of a CPU engine. Whatever the profile, an engine
step's time is close to linear in a few features of the step's composition, so the model fitted
here is

    step_s = w_profile * profile(step) + w_const + w_tokens * T + w_seqs * S
             + w_kv * decode_KV + w_attn * prefill_attention_pairs + w_chunk * P

with T the step's tokens, S its sequences, decode_KV the cached tokens its decodes read, the
prefill term the (query, key) pairs of its prefill chunks and P the number of those chunks
(a prefill costs a fixed amount beside its tokens: other kernels, e.g. on vLLM's CPU build
about 5 ms for any prompt past a few tokens). The prior is the profile itself
(w_profile = 1, the rest 0): with few or one-sided observations the fit stays near it, and
enough varied ones replace it entirely. `calibrated()` turns coefficients into an ordinary
`LatencyModel` (tables, attention and overheads adjusted), so the replica, forks and the fast
prediction paths need no special case.

`StepFit` is the online estimator: a bounded window of observations, older ones weighted down
exponentially (engines drift: warm-up, neighbours, clocks), refitted by ridge regression toward
the prior with Huber weights (a stalled step or a proxy hiccup does not drag the fit).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from block.simulator.latency import AttentionModel, LatencyModel, Overheads, prefill_pairs

FEATURES: tuple[str, ...] = (
    "profile",
    "constant_s",
    "per_token_s",
    "per_sequence_s",
    "per_decode_kv_token_s",
    "per_prefill_pair_s",
    "per_prefill_chunk_s",
)
# Columns are fitted in units where a coefficient of 1 adds about a step's worth of time
# (10 ms; 10 µs a token, 100 µs a sequence...), so the ridge penalty weighs every direction
# alike; `Coefficients` are per natural unit (seconds per token, ...).
_SCALE = np.array([1.0, 1e-2, 1e-5, 1e-4, 1e-8, 1e-10, 1e-3])
PRIOR = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class StepShape:
    """What one engine step computed."""

    num_decode: int
    decode_kv_total: int  # cached tokens read by its decodes, all sequences
    prefill: tuple[tuple[int, int], ...] = ()  # (chunk tokens, tokens cached before the chunk)

    @property
    def num_tokens(self) -> int:
        return self.num_decode + sum(c for c, _ in self.prefill)

    @property
    def num_seqs(self) -> int:
        return self.num_decode + len(self.prefill)

    @property
    def prefill_pairs(self) -> float:
        """Causal (query, key) pairs of the prefill chunks."""
        return float(sum(prefill_pairs(c, kv) for c, kv in self.prefill))

    def profile_s(self, latency: LatencyModel) -> float:
        return latency.step_time_s(
            self.num_tokens, self.num_decode, self.decode_kv_total, self.prefill
        )


def features(shape: StepShape, profile_s: float) -> np.ndarray:
    """The feature row of a step, in natural units (seconds, tokens, pairs)."""
    return np.array(
        [
            profile_s,
            1.0,
            float(shape.num_tokens),
            float(shape.num_seqs),
            float(shape.decode_kv_total),
            shape.prefill_pairs,
            float(len(shape.prefill)),
        ]
    )


@dataclass(frozen=True, slots=True)
class Coefficients:
    """A fitted step model; see the module docstring for the formula."""

    profile: float
    constant_s: float
    per_token_s: float
    per_sequence_s: float
    per_decode_kv_token_s: float
    per_prefill_pair_s: float
    per_prefill_chunk_s: float = 0.0

    @classmethod
    def prior(cls) -> Coefficients:
        return cls(*PRIOR)

    @classmethod
    def of(cls, values: Sequence[float]) -> Coefficients:
        return cls(*(float(v) for v in values))

    def as_tuple(self) -> tuple[float, ...]:
        return tuple(getattr(self, name) for name in FEATURES)

    def predict(self, row: np.ndarray) -> float:
        return float(np.dot(self.as_tuple(), row))


def fit(
    rows: np.ndarray,
    seconds: np.ndarray,
    weights: np.ndarray | None = None,
    prior: Sequence[float] = PRIOR,
    ridge: float = 1e-3,
    iterations: int = 4,
    huber_k: float = 2.0,
) -> tuple[Coefficients, float]:
    """Weighted ridge regression toward `prior` with Huber reweighting; the residual scale is
    relative (steps range over orders of magnitude, so errors are judged as fractions). Every
    coefficient is kept >= 0 (a negative cost would make some step take negative time): one
    that comes out negative is pinned to 0 and the rest refitted.

    Returns the coefficients and the fit's error: the weighted median of the absolute relative
    errors over the observations (a median, so that a few stalled steps do not hide how well
    the rest fit)."""
    x = rows * _SCALE
    y = np.asarray(seconds, dtype=float)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    w = w * len(w) / max(float(np.sum(w)), 1e-12)  # mean weight 1: the ridge keeps its meaning
    w0 = np.asarray(prior, dtype=float) / _SCALE
    # Relative errors: scale each row by 1/y, so a 1 ms step and a 100 ms step weigh alike.
    rel = 1.0 / np.maximum(y, 1e-6)
    robust = np.ones(len(y))
    beta = w0.copy()
    pinned = np.zeros(x.shape[1], dtype=bool)
    for _ in range(iterations + x.shape[1]):
        ww = w * robust * rel**2
        # A pinned coefficient gets an overwhelming ridge toward 0.
        penalty = np.where(pinned, 1e12, ridge)
        target = np.where(pinned, 0.0, w0)
        a = (x.T * ww) @ x + np.diag(penalty)
        b = (x.T * ww) @ y + penalty * target
        beta = np.linalg.solve(a, b)
        negative = (beta < 0) & ~pinned
        if negative.any():
            pinned |= negative
            continue
        r = (x @ beta - y) * rel
        scale = 1.4826 * float(np.median(np.abs(r))) + 1e-3
        robust = np.minimum(1.0, huber_k * scale / np.maximum(np.abs(r), 1e-12))
    beta = np.maximum(beta, 0.0)
    errors = np.abs((x @ beta - y) * rel)
    order = np.argsort(errors)
    cumulative = np.cumsum(w[order])
    error = float(errors[order][np.searchsorted(cumulative, cumulative[-1] / 2)])
    return Coefficients.of(beta * _SCALE), error


class StepFit:
    """Online fit of the step model from observed steps (bounded memory, tracks drift)."""

    def __init__(
        self,
        window: int = 600,
        half_life: float = 200.0,
        refit_every: int = 20,
        min_observations: int = 30,
        ridge: float = 1e-3,
    ) -> None:
        self.half_life = half_life
        self.refit_every = refit_every
        self.min_observations = min_observations
        self.ridge = ridge
        self._rows: deque[np.ndarray] = deque(maxlen=window)
        self._seconds: deque[float] = deque(maxlen=window)
        self._since_fit = 0
        self.observed = 0
        self.coefficients = Coefficients.prior()
        self.fit_error: float | None = None
        self.refits = 0

    def observe(self, row: np.ndarray, seconds: float) -> bool:
        """Add one observed step; True when this observation triggered a refit."""
        if not (math.isfinite(seconds) and seconds > 0 and np.all(np.isfinite(row))):
            return False
        self._rows.append(row)
        self._seconds.append(seconds)
        self.observed += 1
        self._since_fit += 1
        if len(self._rows) >= self.min_observations and self._since_fit >= self.refit_every:
            self.refit()
            return True
        return False

    def refit(self) -> Coefficients:
        n = len(self._rows)
        if n == 0:
            return self.coefficients
        ages = np.arange(n - 1, -1, -1, dtype=float)  # 0 = newest
        weights = 0.5 ** (ages / self.half_life)
        self.coefficients, self.fit_error = fit(
            np.array(self._rows), np.array(self._seconds), weights, ridge=self.ridge
        )
        self._since_fit = 0
        self.refits += 1
        return self.coefficients

    def recent_rows(self, n: int) -> np.ndarray:
        """The feature rows of the last `n` observations (or fewer)."""
        k = min(n, len(self._rows))
        return np.array([self._rows[i] for i in range(len(self._rows) - k, len(self._rows))])

    def __len__(self) -> int:
        return len(self._rows)


class _CalibratedAttention:
    """Profile attention x w_profile plus the linear KV and prefill terms, per layer."""

    def __init__(self, base: AttentionModel, c: Coefficients, layers: int) -> None:
        self.label = f"calibrated({base.label})"
        self._base = base
        self._w = c.profile
        self._kv = c.per_decode_kv_token_s / layers
        self._pair = c.per_prefill_pair_s / layers
        self._chunk = c.per_prefill_chunk_s / layers

    def prefill_s(self, chunk_tokens: int, kv_before: int) -> float:
        base = self._base.prefill_s(chunk_tokens, kv_before)
        return self._w * base + self._pair * prefill_pairs(chunk_tokens, kv_before) + self._chunk

    def decode_s(self, num_seqs: int, kv_total: int) -> float:
        return self._w * self._base.decode_s(num_seqs, kv_total) + self._kv * kv_total

    def kv_save_s(self, num_tokens: int) -> float:
        return self._w * self._base.kv_save_s(num_tokens)


def calibrated(base: LatencyModel, c: Coefficients) -> LatencyModel:
    """`base` with the step model `c` applied: a new LatencyModel sharing nothing mutable with
    `base`. Every term stays a function of the same step features, so the closed-form fast
    paths of prediction remain exact."""
    layers = base.num_layers
    mixed = base.mixed_decode
    kv_per_layer = c.per_decode_kv_token_s / layers

    def mixed_decode(num_decode: float, kv_per_seq: float) -> float:
        # The mixed-launch table is keyed by sequences and KV per sequence; the linear KV term
        # is over all the decodes' KV.
        assert mixed is not None
        return c.profile * mixed(num_decode, kv_per_seq) + kv_per_layer * kv_per_seq * num_decode

    return base.rebuilt(
        mlp_scale=c.profile,
        mlp_per_token_s=c.per_token_s / layers,
        attention=_CalibratedAttention(base.attention, c, layers),
        overheads=Overheads(
            c.profile * base.overheads.step_s + c.constant_s,
            c.profile * base.overheads.per_seq_s + c.per_sequence_s,
        ),
        mixed_decode=mixed_decode if mixed is not None else None,
        calibration=", ".join(f"{n}={v:.4g}" for n, v in zip(FEATURES, c.as_tuple(), strict=True)),
    )
