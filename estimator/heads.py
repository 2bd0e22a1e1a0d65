"""Quantile heads in numpy: p10/p50/p90 of log(1 + reply tokens) from a feature row.

One hidden ReLU layer (or none: a linear quantile regression, used by the prompt-length
baseline). The outputs are (a, m, b) and the quantiles are m - softplus(a), m, m + softplus(b),
so they can never cross. Trained with Adam on the pinball loss, early-stopped on the validation
split; every random draw comes from one seeded generator, so a training run is repeatable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
QUANTILES: tuple[float, float, float] = (0.1, 0.5, 0.9)
logger = logging.getLogger(__name__)


def _softplus(x: FloatArray) -> FloatArray:
    return np.logaddexp(0.0, x).astype(np.float32)


def _sigmoid(x: FloatArray) -> FloatArray:
    out: FloatArray = (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)
    return out


@dataclass(frozen=True)
class QuantileHead:
    """Standardisation plus a one-hidden-layer (or linear) quantile regressor; read-only."""

    mean: FloatArray
    std: FloatArray
    w1: FloatArray  # (features, hidden), or (features, 3) when linear
    b1: FloatArray
    w2: FloatArray | None  # (hidden, 3); None for a linear head
    b2: FloatArray | None

    def _forward(self, x: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        xn = ((x - self.mean) / self.std).astype(np.float32)
        z1 = xn @ self.w1 + self.b1
        if self.w2 is None or self.b2 is None:
            return xn, z1, z1
        hidden = np.maximum(z1, 0.0)
        return xn, z1, hidden @ self.w2 + self.b2

    def predict_log(self, x: FloatArray) -> FloatArray:
        """(n, 3) quantiles of log(1 + tokens), ordered p10 <= p50 <= p90."""
        return _quantiles(self._forward(x)[2])

    def arrays(self) -> dict[str, FloatArray]:
        out = {"mean": self.mean, "std": self.std, "w1": self.w1, "b1": self.b1}
        if self.w2 is not None and self.b2 is not None:
            out |= {"w2": self.w2, "b2": self.b2}
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, FloatArray]) -> QuantileHead:
        return cls(
            mean=arrays["mean"],
            std=arrays["std"],
            w1=arrays["w1"],
            b1=arrays["b1"],
            w2=arrays.get("w2"),
            b2=arrays.get("b2"),
        )


def _quantiles(out: FloatArray) -> FloatArray:
    m = out[:, 1]
    return np.stack([m - _softplus(out[:, 0]), m, m + _softplus(out[:, 2])], axis=1)


def pinball(q: FloatArray, y: FloatArray) -> float:
    """Mean pinball loss of (n, 3) quantiles against (n,) targets, same space as both."""
    tau = np.asarray(QUANTILES, dtype=np.float32)
    u = y[:, None] - q
    return float(np.mean(np.maximum(tau * u, (tau - 1.0) * u)))


@dataclass(frozen=True)
class TrainConfig:
    # Chosen on the validation split (README): wider and more strongly decayed than the first
    # try (256 units, lr 2e-3, decay 1e-4), which overfit within five epochs.
    hidden: int = 512
    epochs: int = 300
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 1e-2
    patience: int = 25
    seed: int = 0


def train(
    x: FloatArray,
    y_log: FloatArray,
    x_val: FloatArray,
    y_val_log: FloatArray,
    config: TrainConfig,
) -> tuple[QuantileHead, dict[str, float]]:
    """Fit a head on (x, log1p tokens); keep the epoch with the lowest validation pinball loss."""
    rng = np.random.default_rng(config.seed)
    n, d = x.shape
    mean = x.mean(0).astype(np.float32)
    std = np.maximum(x.std(0), 1e-6).astype(np.float32)
    out_dim = 3
    linear = config.hidden == 0
    params: dict[str, FloatArray] = {}
    if linear:
        params["w1"] = np.zeros((d, out_dim), dtype=np.float32)
        params["b1"] = np.zeros(out_dim, dtype=np.float32)
    else:
        params["w1"] = (rng.standard_normal((d, config.hidden)) * np.sqrt(2.0 / d)).astype(
            np.float32
        )
        params["b1"] = np.zeros(config.hidden, dtype=np.float32)
        params["w2"] = np.zeros((config.hidden, out_dim), dtype=np.float32)
        params["b2"] = np.zeros(out_dim, dtype=np.float32)
    # Start at the unconditional quantiles: m = median, a and b the softplus-inverse gaps.
    q_lo, q_mid, q_hi = np.quantile(y_log, QUANTILES)
    last_bias = "b1" if linear else "b2"
    params[last_bias][:] = (
        np.log(np.expm1(max(q_mid - q_lo, 1e-3))),
        q_mid,
        np.log(np.expm1(max(q_hi - q_mid, 1e-3))),
    )
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    tau = np.asarray(QUANTILES, dtype=np.float32)

    def head() -> QuantileHead:
        return QuantileHead(
            mean,
            std,
            params["w1"].copy(),
            params["b1"].copy(),
            params["w2"].copy() if "w2" in params else None,
            params["b2"].copy() if "b2" in params else None,
        )

    best = (float("inf"), head(), -1)
    step = 0
    for epoch in range(config.epochs):
        order = rng.permutation(n)
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            current = head()
            xn, z1, out = current._forward(x[idx])
            q = _quantiles(out)
            g = ((y_log[idx][:, None] < q).astype(np.float32) - tau) / (len(idx) * out_dim)
            d_out = np.stack(
                [-g[:, 0] * _sigmoid(out[:, 0]), g.sum(1), g[:, 2] * _sigmoid(out[:, 2])], axis=1
            )
            grads: dict[str, FloatArray] = {}
            if linear:
                grads["w1"] = xn.T @ d_out
                grads["b1"] = d_out.sum(0)
            else:
                hidden = np.maximum(z1, 0.0)
                grads["w2"] = hidden.T @ d_out
                grads["b2"] = d_out.sum(0)
                d_z1 = (d_out @ params["w2"].T) * (z1 > 0)
                grads["w1"] = xn.T @ d_z1
                grads["b1"] = d_z1.sum(0)
            step += 1
            for k, grad in grads.items():
                if k.startswith("w"):
                    grad = grad + config.weight_decay * params[k]
                m1, m2 = moments[k]
                m1 *= 0.9
                m1 += 0.1 * grad
                m2 *= 0.999
                m2 += 0.001 * grad * grad
                corr = np.sqrt(1 - 0.999**step) / (1 - 0.9**step)
                params[k] -= (config.lr * corr * m1 / (np.sqrt(m2) + 1e-8)).astype(np.float32)
        val_loss = pinball(head().predict_log(x_val), y_val_log)
        if val_loss < best[0] - 1e-5:
            best = (val_loss, head(), epoch)
        elif epoch - best[2] >= config.patience:
            break
    logger.info("head: best validation pinball %.4f at epoch %d", best[0], best[2])
    return best[1], {"val_pinball": best[0], "best_epoch": float(best[2])}
