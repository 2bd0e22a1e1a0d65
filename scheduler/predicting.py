"""Predictor fan-out: ask several replicas' predictors at once, keep whoever answers in time.

`ask()` returns within the per-request deadline. Calls still running then are not cancelled:
they finish in the background (bounded by `predict_timeout_s`) and refresh the replica's load
figures, which the load-based fallback reads, and the kept-alive connection survives for the
next request. A predictor that keeps failing or missing the deadline is skipped for a cooldown.
No request ever fails because of a predictor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import pydantic

from block.scheduler.metrics import SchedulerMetrics
from block.scheduler.predictconn import PredictorHttpError, PredictorPool
from block.scheduler.replicas import Replica
from block.scheduler.settings import SchedulerSettings
from block.simulator.prediction import Prediction
from block.wire.predict import LoadFigures, PredictResponse

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    prediction: Prediction
    figures: LoadFigures
    sent_at: float  # loop time the question left; the figures are at least this fresh
    prefix_hit_tokens: int = 0  # prompt tokens the replica holds in its prefix cache


class PredictorClient:
    """Asks `/v1/predict` of replicas' sidecars, over keep-alive connection pools."""

    def __init__(self, settings: SchedulerSettings, metrics: SchedulerMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._pools: dict[str, PredictorPool] = {}
        self._background: set[asyncio.Task[Answer | None]] = set()

    async def ask(
        self,
        replicas: Sequence[Replica],
        prompt_tokens: int,
        output_tokens: int,
        block_hashes: Sequence[int] | None = None,
    ) -> list[Answer | None]:
        """One answer (or None) per replica, in order, within the deadline; `block_hashes`
        (the prompt's prefix-cache chain) make the predictions count cache hits."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        body = b'{"prompt_tokens":%d,"output_tokens":%d' % (prompt_tokens, output_tokens)
        if block_hashes:
            body += b',"block_hashes":[%s]' % ",".join(map(str, block_hashes)).encode()
        body += b"}"
        tasks: list[asyncio.Task[Answer | None] | None] = []
        for r in replicas:
            if r.predictor_skip_until > now:
                tasks.append(None)
            else:
                tasks.append(loop.create_task(self._one(r, body, now)))
        running = [t for t in tasks if t is not None]
        if running:
            _, pending = await asyncio.wait(running, timeout=self._settings.predict_deadline_s)
            for t in pending:
                self._background.add(t)
                t.add_done_callback(self._background.discard)
        answers: list[Answer | None] = []
        for r, task in zip(replicas, tasks, strict=True):
            if task is None or not task.done():
                if task is not None:
                    self._metrics.child(self._metrics.predictor_timeouts, r.name).inc()
                    r.note_predictor_failure(
                        now,
                        self._settings.predictor_failures_to_skip,
                        self._settings.predictor_cooldown_s,
                    )
                answers.append(None)
            else:
                answer = task.result()
                if answer is not None:
                    # Only an answer in time clears the count: a predictor that is always
                    # late still costs every decision the whole deadline.
                    r.note_predictor_success()
                answers.append(answer)
        return answers

    def _pool(self, replica: Replica) -> PredictorPool:
        pool = self._pools.get(replica.url)
        if pool is None:
            pool = PredictorPool(replica.url, self._settings.connect_timeout_s)
            self._pools[replica.url] = pool
        return pool

    def prune(self, keep: set[str]) -> None:
        """Close the connections of predictors no longer among `keep` (replica URLs)."""
        for url in [u for u in self._pools if u not in keep]:
            self._pools.pop(url).close()

    async def _one(self, replica: Replica, body: bytes, sent_at: float) -> Answer | None:
        try:
            async with asyncio.timeout(self._settings.predict_timeout_s):
                status, raw = await self._pool(replica).post(body)
            if status != 200:
                raise _BadAnswer(f"HTTP {status}")
            answer = PredictResponse.model_validate_json(raw)
        except (
            PredictorHttpError,
            OSError,
            TimeoutError,
            pydantic.ValidationError,
            _BadAnswer,
        ) as e:
            loop = asyncio.get_running_loop()
            self._metrics.child(self._metrics.predictor_errors, replica.name).inc()
            replica.note_predictor_failure(
                loop.time(),
                self._settings.predictor_failures_to_skip,
                self._settings.predictor_cooldown_s,
            )
            logger.debug("predictor of %s failed: %s", replica.name, _short(e))
            return None
        elapsed = asyncio.get_running_loop().time() - sent_at
        self._metrics.predictor_seconds.observe(elapsed)
        replica.note_figures(answer.load, sent_at, answer.model)
        return Answer(
            Prediction(answer.queue_s, answer.ttft_s, answer.e2e_s, answer.added_delay_s),
            answer.load,
            sent_at,
            answer.predictions[0].prefix_hit_tokens if answer.predictions else 0,
        )

    async def close(self) -> None:
        """Cancel the late answers still running (shutdown)."""
        for t in list(self._background):
            t.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self.prune(set())


class _BadAnswer(Exception):
    pass


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]
