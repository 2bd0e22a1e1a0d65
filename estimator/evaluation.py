"""Accuracy figures for length estimates: point errors and quantile calibration.

Point figures use the predicted median (rounded to whole tokens), the estimate the gateway uses:

* `mae`: mean |predicted - actual| tokens.
* `mape`: mean |predicted - actual| / actual (replies of a few tokens dominate it).
* `wape`: sum |predicted - actual| / sum actual, the error relative to the work to be done.
* `median_ape`: the median of |predicted - actual| / actual.
* `within_50`, `within_100`: share of prompts whose estimate is within 50 / 100 tokens.

Calibration of the p10/p50/p90 quantiles: the share of actual lengths below each (ideally 0.1,
0.5, 0.9), the share inside [p10, p90] (ideally 0.8), and the mean pinball loss in log space.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from block.estimator import heads

FloatArray = npt.NDArray[np.float32]


def tokens_from_log(q_log: FloatArray) -> npt.NDArray[np.int64]:
    """Quantiles of log(1 + tokens) → whole token counts, at least 1."""
    return np.maximum(np.rint(np.expm1(q_log)), 1).astype(np.int64)


def point_metrics(predicted: npt.ArrayLike, actual: npt.ArrayLike) -> dict[str, float]:
    p = np.asarray(predicted, dtype=np.float64)
    y = np.asarray(actual, dtype=np.float64)
    if p.shape != y.shape or y.size == 0:
        raise ValueError("predicted and actual must be equal-length, non-empty")
    err = np.abs(p - y)
    ape = err / np.maximum(y, 1.0)
    return {
        "mae": float(err.mean()),
        "mape": float(ape.mean()),
        "wape": float(err.sum() / y.sum()),
        "median_ape": float(np.median(ape)),
        "within_50": float(np.mean(err <= 50)),
        "within_100": float(np.mean(err <= 100)),
    }


def calibration(q_log: FloatArray, actual: npt.ArrayLike) -> dict[str, float]:
    y_log = np.log1p(np.asarray(actual, dtype=np.float32))
    below = (y_log[:, None] <= q_log).mean(0)
    inside = np.mean((y_log >= q_log[:, 0]) & (y_log <= q_log[:, 2]))
    return {
        "below_p10": float(below[0]),
        "below_p50": float(below[1]),
        "below_p90": float(below[2]),
        "inside_p10_p90": float(inside),
        "pinball_log": heads.pinball(q_log, y_log),
    }


def report(q_log: FloatArray, actual: npt.ArrayLike) -> dict[str, Any]:
    """Point metrics of the median plus calibration of all three quantiles."""
    return {
        **point_metrics(tokens_from_log(q_log[:, 1]), actual),
        "calibration": calibration(q_log, actual),
    }
