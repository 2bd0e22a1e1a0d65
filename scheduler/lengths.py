"""Response-length estimates for routing: the estimator when present, else a prior.

The estimate (in tokens per sequence) goes to the predictors with each question and to the
chosen sidecar in the `x-block-output-tokens` header, which its live twin uses. The request's
`max_tokens` caps it; `ignore_eos` with `max_tokens` makes it exact. The estimator is CPU-bound
(about a millisecond per prompt), so it runs in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Protocol

from block.errors import BlockError
from block.scheduler.metrics import SchedulerMetrics
from block.scheduler.parsing import Inbound

logger = logging.getLogger(__name__)


class EstimateLike(Protocol):
    @property
    def p50_tokens(self) -> int: ...


class Estimator(Protocol):
    """What the gateway needs of `block.estimator.LengthEstimator`."""

    @property
    def name(self) -> str: ...

    def estimate(self, prompts: Sequence[str]) -> Sequence[EstimateLike]: ...


class LengthSource:
    """Turns an `Inbound` into the output-token estimate used for routing."""

    def __init__(
        self,
        estimator: Estimator | None,
        prior_tokens: int,
        executor: Executor | None,
        metrics: SchedulerMetrics,
        max_queue: int = 16,
    ) -> None:
        self._estimator = estimator if executor is not None else None
        self._prior = prior_tokens
        self._executor = executor
        self._metrics = metrics
        self._max_pending = max_queue
        self._pending = 0

    @property
    def name(self) -> str:
        return f"estimator:{self._estimator.name}" if self._estimator else "prior"

    async def output_tokens(self, inbound: Inbound) -> int:
        if inbound.exact_output and inbound.max_tokens is not None:
            return inbound.max_tokens
        t0 = time.perf_counter()
        tokens = self._prior
        if self._estimator is not None and inbound.length_text.strip():
            if self._pending >= self._max_pending:
                self._metrics.child(self._metrics.length_fallbacks, "busy").inc()
            else:
                tokens = await self._estimate(inbound.length_text, tokens)
                self._metrics.estimate_seconds.observe(time.perf_counter() - t0)
        if inbound.max_tokens is not None:
            tokens = min(tokens, inbound.max_tokens)
        self._metrics.estimated_output_tokens.observe(tokens)
        return tokens

    async def _estimate(self, text: str, prior: int) -> int:
        assert self._estimator is not None
        loop = asyncio.get_running_loop()
        self._pending += 1
        try:
            [est] = await loop.run_in_executor(self._executor, self._estimator.estimate, [text])
            return max(1, int(est.p50_tokens))
        except (BlockError, ValueError) as e:
            # A prompt the estimator cannot read still gets routed, on the prior.
            self._metrics.child(self._metrics.length_fallbacks, "error").inc()
            logger.debug("length estimate failed, using the prior: %s", e)
            return prior
        finally:
            self._pending -= 1
