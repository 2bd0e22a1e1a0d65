"""Online calibration: the sidecar refits its step-time model to the engine it proxies.

The twin knows what the engine is running; the streamed tokens tell when each step ended
(`block.simulator.observed_steps`). Every clean step is an observation for `StepFit`
(`block.simulator.calibration`); after each refit the twin simulates with the fitted model, so
predictions follow the engine that is really there (a different GPU than the profile, an
upgraded engine, a CPU build) and its drift (warm-up, neighbours). The fit always starts from
the configured profile, which is also its prior.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping

import numpy as np

from block.predictor.twin import LiveTwin, Outcome, Tracked
from block.simulator.calibration import FEATURES, StepFit, calibrated, features
from block.simulator.latency import LatencyModel
from block.simulator.observed_steps import InFlight, ObservedStep, StepObserver

logger = logging.getLogger(__name__)

MIN_OUTCOMES = 10  # completed requests before the TTFT offset applies
# A refit whose predictions for the recent steps move less than this is not applied: building
# the calibrated model costs milliseconds on the event loop, and a converged fit mostly
# re-finds itself.
APPLY_CHANGE = 0.01


class Calibrator:
    """Feeds the twin's token events to a step observer and the steps to the fit."""

    def __init__(self, twin: LiveTwin, fit: StepFit | None = None) -> None:
        self.twin = twin
        self.base: LatencyModel = twin.latency
        self.fit = fit if fit is not None else StepFit()
        self.applied = self.fit.coefficients  # the model the twin simulates with
        self.observer = StepObserver(twin.replica.config.max_num_batched_tokens)
        # predicted / observed time of recent steps, by the model in use when they ran.
        self.recent_ratios: deque[float] = deque(maxlen=200)
        # Observed minus predicted TTFT of recent streamed requests (the twin's prediction at
        # their arrival): what the engine spends on a request outside its steps (HTTP,
        # tokenizing, waiting for the step in flight, detokenizing) plus any model bias.
        self.ttft_gaps: deque[float] = deque(maxlen=200)
        twin.on_token = self._token

    def _token(self, t: Tracked, now: float, count: int) -> None:
        # The twin's own records are what the observer reads (before `count` is added).
        step = self.observer.token(t.rid, now, count, t, self._in_flight)
        if step is not None:
            self.observe(step)

    def _in_flight(self) -> Mapping[int, InFlight]:
        return self.twin.requests

    def observe(self, step: ObservedStep) -> None:
        shape, seconds = step.shape, step.seconds
        self.recent_ratios.append(shape.profile_s(self.twin.latency) / seconds)
        if self.fit.observe(features(shape, shape.profile_s(self.base)), seconds):
            new = self.fit.coefficients
            rows = self.fit.recent_rows(64)
            before = np.maximum(rows @ np.array(self.applied.as_tuple()), 1e-9)
            change = np.abs(rows @ np.array(new.as_tuple()) - before) / before
            if float(change.max()) < APPLY_CHANGE:
                return
            self.applied = new
            self.twin.set_latency(calibrated(self.base, new))
            if self.fit.refits in (1, 10) or self.fit.refits % 100 == 0:
                logger.info(
                    "step model refit %d on %d steps: %s (fit error %.1f %%)",
                    self.fit.refits, len(self.fit), self.twin.latency.calibration,
                    100 * (self.fit.fit_error or 0.0),
                )  # fmt: skip

    def observe_outcome(self, o: Outcome) -> None:
        if o.predicted is not None and o.ttft_s is not None:
            self.ttft_gaps.append(o.ttft_s - o.predicted.ttft_s)

    @property
    def ttft_offset_s(self) -> float:
        """Added to every prediction's TTFT and e2e: the median of the recent TTFT gaps once
        there are enough of them (never negative: a step model that is too slow is the
        step fit's to correct, not this offset's)."""
        if len(self.ttft_gaps) < MIN_OUTCOMES:
            return 0.0
        gaps = sorted(self.ttft_gaps)
        return max(0.0, gaps[len(gaps) // 2])

    def coefficients(self) -> dict[str, float]:
        return dict(zip(FEATURES, self.fit.coefficients.as_tuple(), strict=True))

    def median_recent_error(self) -> float | None:
        """Median |predicted / observed - 1| of recent steps (timing jitter included)."""
        if not self.recent_ratios:
            return None
        errors = sorted(abs(r - 1.0) for r in self.recent_ratios)
        return errors[len(errors) // 2]

    def median_recent_ratio(self) -> float | None:
        """Median predicted / observed of recent steps: 1 when the model has no bias."""
        if not self.recent_ratios:
            return None
        return sorted(self.recent_ratios)[len(self.recent_ratios) // 2]
