"""`block predictor`: the sidecar app.

    POST /v1/completions, /v1/chat/completions, GET /v1/models   proxied to the engine
    POST /v1/predict   "what if you got this request now?" (block.wire.predict)
    GET  /v1/state     the twin, the engine's gauges, the drift between them
    GET  /healthz      the process is alive
    GET  /readyz       the engine answers (503 otherwise)
    GET  /metrics      block_predictor_* (prediction latency, predicted-vs-actual error, drift)

Predictions run on the event loop, not in an executor: they take tens to hundreds of
microseconds (bench/predictor_latency.py), less than a thread hop would add, and the twin is
not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from block.errors import Unavailable
from block.predictor import problems, proxying
from block.predictor.calibrating import Calibrator
from block.predictor.lengths import LengthDistribution
from block.predictor.metrics import CalibrationFigures, PredictorMetrics
from block.predictor.reconciling import EngineFigures, Scraper
from block.predictor.settings import PredictorSettings
from block.predictor.tokens import Tokens
from block.predictor.twin import LiveTwin
from block.simulator.latency import LatencyModel
from block.simulator.replica import ReplicaConfig
from block.wire.predict import (
    EngineLoad,
    LoadFigures,
    PredictedLatency,
    PredictRequest,
    PredictResponse,
    StateResponse,
    TwinConfig,
)

logger = logging.getLogger(__name__)


class Sidecar:
    """The sidecar's state: twin, proxy, scraper, metrics. Built at startup."""

    def __init__(
        self,
        settings: PredictorSettings,
        twin: LiveTwin,
        tokens: Tokens,
        session: aiohttp.ClientSession,
    ) -> None:
        self.settings = settings
        self.twin = twin
        self.calibrator = Calibrator(twin) if settings.calibrate else None
        self.metrics = PredictorMetrics.create(
            self._gauges,
            self._calibration,
            lambda: {k: float(v) for k, v in self.mismatches.items()},
        )
        self.proxy = proxying.Proxy(settings, twin, tokens, session, self.metrics)
        if self.calibrator is not None:
            self.proxy.on_outcome = self.calibrator.observe_outcome
        self.scraper = Scraper(session, settings.engine_url, settings.connect_timeout_s)
        self.drift: EngineLoad | None = None
        self.mismatches: dict[str, bool] = {}  # engine setting -> differs from ours now
        self._last_ok_s = -float("inf")

    # ------------------------------------------------------------------ reconciling
    async def reconcile_once(self) -> None:
        figures = await self.scraper.scrape()
        self.metrics.scrapes.labels("ok" if figures else "error").inc()
        if figures is None:
            return
        self._last_ok_s = time.monotonic()
        twin = self.twin
        twin.heard()
        self._adopt_engine_config(figures)
        twin.settle()
        load = twin.load()
        kv = None if figures.kv_used_ratio is None else figures.kv_used_ratio - load.kv_used_ratio
        self.drift = EngineLoad(
            num_running=figures.num_running - load.num_running,
            num_waiting=figures.num_waiting - load.num_waiting,
            kv_used_ratio=kv,
        )
        if abs(self.drift.num_running) + abs(self.drift.num_waiting) >= 4:
            logger.info(
                "twin drift: engine %d running / %d waiting, twin %d / %d",
                figures.num_running, figures.num_waiting, load.num_running, load.num_waiting,
            )  # fmt: skip

    def _adopt_engine_config(self, figures: EngineFigures) -> None:
        """The engine is the one source of truth for the settings it reports (KV blocks, block
        size, prefix caching): the twin follows them. A setting configured otherwise, or a
        batch larger than the configured max_num_seqs (vLLM does not report it), is a
        mismatch: logged once as a warning and exported as
        block_predictor_engine_config_mismatch{setting}."""
        s = self.settings
        cfg = self.twin.replica.config
        explicit = s.model_fields_set
        reported: dict[str, object] = {}
        if figures.num_blocks is not None:
            reported["num_blocks"] = figures.num_blocks
        if figures.block_size is not None:
            reported["block_size"] = figures.block_size
        if figures.prefix_caching is not None:
            reported["enable_prefix_caching"] = figures.prefix_caching
        for name, value in reported.items():
            mine = getattr(s, name)
            self._mismatch(name, name in explicit and mine != value, mine, value)
        self._mismatch(
            "max_num_seqs",
            figures.num_running > cfg.max_num_seqs,
            cfg.max_num_seqs,
            f"{figures.num_running:g} running",
        )
        new = dataclasses.replace(cfg, **reported)  # type: ignore[arg-type]
        if new != cfg and self.twin.reconfigure(new):
            logger.info(
                "twin follows the engine's settings: %s",
                ", ".join(f"{k}={v}" for k, v in reported.items()),
            )

    def _mismatch(self, setting: str, now: bool, mine: object, engine: object) -> None:
        was = self.mismatches.get(setting, False)
        self.mismatches[setting] = now
        if now and not was:
            logger.warning(
                "engine setting mismatch: %s is %s here but the engine reports %s; the twin "
                "follows the engine where it can: give both containers the same value",
                setting, mine, engine,
            )  # fmt: skip

    async def reconcile_forever(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except Exception:  # the loop must survive anything a scrape brings
                logger.exception("reconciling with the engine failed")
            await asyncio.sleep(self.settings.reconcile_interval_s)

    @property
    def ready(self) -> bool:
        return self.scraper.up and (
            time.monotonic() - self._last_ok_s < self.settings.stale_after_s
        )

    # ------------------------------------------------------------------ views
    def _calibration(self) -> CalibrationFigures | None:
        cal = self.calibrator
        if cal is None:
            return None
        return CalibrationFigures(
            coefficients=cal.coefficients(),
            fit_error=cal.fit.fit_error,
            step_error=cal.median_recent_error(),
            clean_steps=cal.observer.counts.clean,
            skipped_steps=dict(cal.observer.counts.skipped),
            refits=cal.fit.refits,
            ttft_offset_s=cal.ttft_offset_s,
        )

    def _gauges(self) -> dict[str, float]:
        twin = self.twin
        twin.settle()
        load = twin.load()
        out = {
            "block_predictor_inflight_requests": float(len(twin.requests)),
            "block_predictor_twin_running_requests": float(load.num_running),
            "block_predictor_twin_waiting_requests": float(load.num_waiting),
            "block_predictor_twin_kv_used_ratio": load.kv_used_ratio,
            "block_predictor_state_age_seconds": min(twin.state_age_s(), 1e9),
            "block_predictor_engine_up": 1.0 if self.scraper.up else 0.0,
        }
        eng, drift = self.scraper.last, self.drift
        if eng is not None:
            out["block_predictor_engine_running_requests"] = eng.num_running
            out["block_predictor_engine_waiting_requests"] = eng.num_waiting
            if eng.kv_used_ratio is not None:
                out["block_predictor_engine_kv_used_ratio"] = eng.kv_used_ratio
        if drift is not None:
            out["block_predictor_drift_running_requests"] = drift.num_running
            out["block_predictor_drift_waiting_requests"] = drift.num_waiting
            if drift.kv_used_ratio is not None:
                out["block_predictor_drift_kv_used_ratio"] = drift.kv_used_ratio
        return out

    def load_figures(self) -> LoadFigures:
        load = self.twin.load()
        return LoadFigures(
            num_running=load.num_running,
            num_waiting=load.num_waiting,
            kv_blocks_used=load.used_blocks,
            kv_blocks_total=load.num_blocks,
            block_size=load.block_size,
            waiting_prefill_tokens=load.waiting_prefill_tokens,
        )

    def state(self) -> StateResponse:
        twin = self.twin
        twin.settle()
        cfg = twin.replica.config
        eng = self.scraper.last
        return StateResponse(
            model=self.settings.model_name,
            engine_url=self.settings.engine_url,
            engine_up=self.scraper.up,
            engine_error=self.scraper.last_error,
            load=self.load_figures(),
            engine=None
            if eng is None
            else EngineLoad(
                num_running=eng.num_running,
                num_waiting=eng.num_waiting,
                kv_used_ratio=eng.kv_used_ratio,
            ),
            drift=self.drift,
            inflight=len(twin.requests),
            state_age_s=min(twin.state_age_s(), 1e9),
            length_extensions=twin.num_extensions,
            resyncs=twin.num_resyncs,
            recent_sizes=list(self.proxy.recent_sizes),
            config=TwinConfig(
                scheduler=cfg.scheduler,
                max_num_batched_tokens=cfg.max_num_batched_tokens,
                max_num_seqs=cfg.max_num_seqs,
                num_blocks=twin.replica.num_blocks,
                block_size=cfg.block_size,
                max_model_len=twin.max_model_len,
            ),
        )


SIDECAR = web.AppKey("sidecar", Sidecar)


# ---------------------------------------------------------------------------------- handlers
async def predict(request: web.Request) -> web.Response:
    side = request.app[SIDECAR]
    body = problems.validate(PredictRequest, problems.parse_json(await problems.read_body(request)))
    start = time.perf_counter()
    twin = side.twin
    cands = body.candidates
    hashes = [c.block_hashes for c in cands]
    preds = twin.predict([(c.prompt_tokens, c.output_tokens) for c in cands], body.impact, hashes)
    hits = [twin.prefix_hit_tokens(c.prompt_tokens, h) for c, h in zip(cands, hashes, strict=True)]
    load = side.load_figures()
    # What the engine spends on a request outside its steps, learned from the streams.
    offset = side.calibrator.ttft_offset_s if side.calibrator is not None else 0.0
    if offset:
        preds = [
            dataclasses.replace(p, ttft_s=p.ttft_s + offset, e2e_s=p.e2e_s + offset) for p in preds
        ]
    compute = time.perf_counter() - start
    side.metrics.predict_seconds.observe(compute)
    side.metrics.predictions.inc(len(preds))
    first = preds[0]
    resp = PredictResponse(
        queue_s=first.queue_s,
        ttft_s=first.ttft_s,
        e2e_s=first.e2e_s,
        added_delay_s=first.added_delay_s,
        predictions=[
            PredictedLatency(
                queue_s=p.queue_s,
                ttft_s=p.ttft_s,
                e2e_s=p.e2e_s,
                added_delay_s=p.added_delay_s,
                prefix_hit_tokens=hit,
            )
            for p, hit in zip(preds, hits, strict=True)
        ],
        load=load,
        state_age_s=min(twin.state_age_s(), 1e9),
        model=side.settings.model_name,
        compute_s=compute,
    )
    return web.Response(body=resp.model_dump_json().encode(), content_type="application/json")


async def state(request: web.Request) -> web.Response:
    side = request.app[SIDECAR]
    return web.Response(
        body=side.state().model_dump_json().encode(), content_type="application/json"
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    side = request.app[SIDECAR]
    if not side.ready:
        raise Unavailable(
            f"the engine at {side.settings.engine_url} is not answering: "
            f"{side.scraper.last_error or 'no recent scrape'}"
        )
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    side = request.app[SIDECAR]
    body = generate_latest(side.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def completions(request: web.Request) -> web.StreamResponse:
    return await request.app[SIDECAR].proxy.handle(request, "completion")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await request.app[SIDECAR].proxy.handle(request, "chat")


async def models(request: web.Request) -> web.Response:
    return await proxying.models(request, request.app[SIDECAR].proxy)


# ---------------------------------------------------------------------------------- app
def replica_config(settings: PredictorSettings) -> ReplicaConfig:
    return ReplicaConfig(
        scheduler=settings.scheduler,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        max_num_seqs=settings.max_num_seqs,
        block_size=settings.block_size,
        num_blocks=settings.num_blocks,
        max_model_len=settings.max_model_len,
        enable_prefix_caching=settings.enable_prefix_caching,
    )


def create_app(
    settings: PredictorSettings,
    tokens: Tokens | None = None,
    lengths: LengthDistribution | None = None,
    latency: LatencyModel | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """The sidecar's app. The profile, tokenizer and length data load at startup; tests may
    pass already-loaded ones, and benchmarks a clock to freeze the twin's time."""
    app = problems.new_app(settings.max_body_bytes)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        model = latency or LatencyModel.load(settings.gpu, settings.model, settings.tp)
        config = replica_config(settings)
        if config.num_blocks is None and model.gpu.memory_bytes is None:
            # Hardware known only by its tables (block profile engine): the KV cache size
            # comes from the engine's own report at the first scrape, just below.
            config = dataclasses.replace(config, num_blocks=1)
        twin = LiveTwin(
            model,
            config,
            lengths if lengths is not None else LengthDistribution.sharegpt(),
            sync_interval_s=settings.sync_interval_s,
            prior_output_tokens=settings.prior_output_tokens,
            clock=clock,
        )
        # Idle connections to the engine are dropped before the engine drops them: vLLM's
        # server (uvicorn) closes idle keep-alive connections after 5 s, and a request sent on
        # one it is closing fails ("Server disconnected"), seen against the real engine.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0)
        async with aiohttp.ClientSession(connector=connector) as session:
            side = Sidecar(
                settings, twin, tokens if tokens is not None else Tokens.llama3(), session
            )
            app[SIDECAR] = side
            await side.reconcile_once()  # learn the engine's KV cache before any traffic
            task = asyncio.create_task(side.reconcile_forever())
            # Tables, tokenizer and length data are long-lived: keep them out of the cyclic
            # collector's generations so its pauses stay short (prediction p99).
            gc.collect()
            gc.freeze()
            logger.info(
                "predictor for %s at %s: twin with %d KV blocks, engine %s",
                settings.model_name, settings.engine_url, twin.replica.num_blocks,
                "up" if side.scraper.up else f"down ({side.scraper.last_error})",
            )  # fmt: skip
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/predict", predict)
    app.router.add_get("/v1/state", state)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
