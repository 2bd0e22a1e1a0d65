"""Quantile heads and the accuracy figures."""

from __future__ import annotations

import numpy as np
import pytest

from block.estimator import evaluation, heads


def test_point_metrics_by_hand() -> None:
    m = evaluation.point_metrics([100, 200, 10], [150, 100, 10])
    assert m["mae"] == pytest.approx((50 + 100 + 0) / 3)
    assert m["mape"] == pytest.approx((50 / 150 + 100 / 100 + 0) / 3)
    assert m["wape"] == pytest.approx(150 / 260)
    assert m["within_50"] == pytest.approx(2 / 3)
    assert m["within_100"] == pytest.approx(1.0)


def test_point_metrics_reject_mismatched_inputs() -> None:
    with pytest.raises(ValueError):
        evaluation.point_metrics([1, 2], [1])
    with pytest.raises(ValueError):
        evaluation.point_metrics([], [])


def test_calibration_counts_shares_below_each_quantile() -> None:
    y = np.array([5, 50, 500, 5000], dtype=np.float32)
    q = np.log1p(np.tile(np.array([[10, 100, 1000]], dtype=np.float32), (4, 1)))
    c = evaluation.calibration(q, y)
    assert (c["below_p10"], c["below_p50"], c["below_p90"]) == (0.25, 0.5, 0.75)
    assert c["inside_p10_p90"] == 0.5


def test_tokens_from_log_is_at_least_one() -> None:
    q = np.array([[-5.0, 0.0, np.log1p(99.0)]], dtype=np.float32)
    assert evaluation.tokens_from_log(q).tolist() == [[1, 1, 99]]


def _data(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    # A noisy, heteroscedastic log-linear relation, like reply length vs prompt statistics.
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (5 + 0.8 * x[:, 0] - 0.5 * np.abs(x[:, 1]) + rng.normal(scale=0.6, size=n)).astype(
        np.float32
    )
    return x, y


@pytest.mark.parametrize("hidden", [0, 16])
def test_training_beats_the_unconditional_quantiles_and_keeps_order(hidden: int) -> None:
    x, y = _data(0, 2000)
    xv, yv = _data(1, 500)
    head, info = heads.train(
        x, y, xv, yv, heads.TrainConfig(hidden=hidden, epochs=80, lr=5e-3, weight_decay=0.0)
    )
    q = head.predict_log(xv)
    assert np.all(q[:, 0] <= q[:, 1]) and np.all(q[:, 1] <= q[:, 2])
    prior = np.tile(np.quantile(y, heads.QUANTILES), (len(yv), 1)).astype(np.float32)
    assert info["val_pinball"] < 0.8 * heads.pinball(prior, yv)
    below = (yv[:, None] <= q).mean(0)
    assert below[0] < below[1] < below[2]
    assert abs(below[1] - 0.5) < 0.08


def test_training_is_repeatable() -> None:
    x, y = _data(0, 500)
    xv, yv = _data(1, 100)
    cfg = heads.TrainConfig(hidden=8, epochs=5)
    a, _ = heads.train(x, y, xv, yv, cfg)
    b, _ = heads.train(x, y, xv, yv, cfg)
    np.testing.assert_array_equal(a.predict_log(xv), b.predict_log(xv))


def test_head_round_trips_through_arrays() -> None:
    x, y = _data(0, 300)
    head, _ = heads.train(x, y, x, y, heads.TrainConfig(hidden=4, epochs=3))
    again = heads.QuantileHead.from_arrays(head.arrays())
    np.testing.assert_array_equal(again.predict_log(x), head.predict_log(x))
