"""Arrival-rate forecasting for the autoscaler: Holt's linear smoothing with a damped trend.

Why Holt (double exponential smoothing) and not a moving average, Holt-Winters or ARIMA:
the autoscaler must act a replica start-up lead time *ahead* of the load, so it needs the
trend, not only the level (a moving average lags a ramp by half its width). The horizon is
minutes, far shorter than the daily season, so Holt-Winters' seasonal term would need a day of
history for nothing; ARIMA needs fitting and more history than a fresh cluster has. Holt is
two numbers of state, updates in O(1) per interval and is pure. The trend is damped (Gardner &
McKenzie 1985, factor `phi`) so a short burst is not extrapolated into an ever-growing ramp,
and the smoothed squared one-step error gives a burst margin for the forecast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HoltParams:
    alpha: float = 0.5  # level smoothing: reacts within ~2 intervals
    beta: float = 0.2  # trend smoothing: a trend must persist a few intervals to count
    phi: float = 0.9  # trend damping per interval (1: Holt's undamped linear trend)
    error_alpha: float = 0.2  # smoothing of the squared one-step error

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "error_alpha"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must lie in (0, 1], got {value}")
        if not 0.0 < self.phi <= 1.0:
            raise ValueError(f"phi must lie in (0, 1], got {self.phi}")


@dataclass(frozen=True, slots=True)
class HoltState:
    """Smoothed level and trend of a rate (per second; trend per interval) and its error."""

    level: float
    trend: float = 0.0
    error_var: float = 0.0
    num_updates: int = 1

    @property
    def error_std(self) -> float:
        return math.sqrt(self.error_var)


def holt_update(state: HoltState | None, observed: float, params: HoltParams) -> HoltState:
    """Fold one interval's observed rate into the state (None: the first observation)."""
    if state is None:
        return HoltState(level=observed)
    predicted = state.level + params.phi * state.trend
    error = observed - predicted
    level = params.alpha * observed + (1 - params.alpha) * predicted
    trend = params.beta * (level - state.level) + (1 - params.beta) * params.phi * state.trend
    error_var = params.error_alpha * error * error + (1 - params.error_alpha) * state.error_var
    return HoltState(level, trend, error_var, state.num_updates + 1)


def holt_forecast(state: HoltState, steps: int, params: HoltParams) -> float:
    """The rate `steps` intervals ahead (damped trend: level + (phi + ... + phi^steps) trend)."""
    if steps <= 0:
        return max(0.0, state.level)
    phi = params.phi
    damp = float(steps) if phi == 1.0 else phi * (1 - phi**steps) / (1 - phi)
    return max(0.0, state.level + damp * state.trend)
