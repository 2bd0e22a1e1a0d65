"""`block estimator serve`: the length estimator as an HTTP service (sidecar deployments).

    POST /v1/estimate   {"prompt": "..."} or {"prompt": ["...", ...]} → estimates per prompt
    GET  /healthz       200 once the artifact is loaded
    GET  /metrics       Prometheus text format

Errors are `application/problem+json` (RFC 9457): 400 for unreadable JSON, 422 for a body that
does not match `block.wire.estimator.EstimateRequest`, 413 for an oversized body. Estimates run
in a thread pool so a large batch never blocks the event loop. Prompts are never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import pydantic
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from block.errors import BlockError
from block.estimator.estimating import Estimate, LengthEstimator
from block.estimator.metrics import EstimatorMetrics
from block.estimator.settings import EstimatorSettings
from block.wire.estimator import (
    EstimateRequest,
    EstimateResponse,
    LengthEstimate,
    LengthQuantiles,
)
from block.wire.problems import PROBLEM_TYPE, problem_document

logger = logging.getLogger(__name__)
ESTIMATOR = web.AppKey("estimator", LengthEstimator)
METRICS = web.AppKey("metrics", EstimatorMetrics)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _problem(status: int, title: str, detail: str, request_id: str) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(problem_document(status, title, detail, request_id)),
        content_type=PROBLEM_TYPE,
    )


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every failure to problem+json, by exception class."""
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    try:
        return await handler(request)
    except BlockError as e:
        return _problem(e.status, e.title, e.detail, request_id)
    except pydantic.ValidationError as e:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()
        )
        return _problem(422, "Invalid request body", detail, request_id)
    except web.HTTPException as e:
        return _problem(e.status, e.reason, e.text or e.reason, request_id)
    except Exception:
        logger.exception("estimator request %s failed", request_id)
        return _problem(500, "Internal error", "see the service log", request_id)


async def estimate(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    try:
        raw = await request.read()
        try:
            payload = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise web.HTTPBadRequest(reason="Bad request", text=f"body is not JSON: {e}") from e
        body = EstimateRequest.model_validate(payload)
    except (web.HTTPException, pydantic.ValidationError):
        metrics.requests.labels("invalid").inc()
        raise
    prompts = body.prompts
    estimator = request.app[ESTIMATOR]
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    try:
        results: list[Estimate] = await loop.run_in_executor(
            request.app[EXECUTOR], estimator.estimate, prompts
        )
    except BlockError:
        metrics.requests.labels("invalid").inc()
        raise
    except Exception:
        metrics.requests.labels("error").inc()
        raise
    metrics.latency.observe(time.perf_counter() - t0)
    metrics.requests.labels("ok").inc()
    metrics.prompts.inc(len(prompts))
    for r in results:
        metrics.predicted_tokens.observe(r.p50_tokens)
    response = EstimateResponse(
        model=estimator.name,
        estimates=[
            LengthEstimate(
                tokens=r.median_tokens,
                quantiles=LengthQuantiles(p10=r.p10_tokens, p50=r.p50_tokens, p90=r.p90_tokens),
            )
            for r in results
        ],
    )
    return web.json_response(text=response.model_dump_json())


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "model": request.app[ESTIMATOR].name})


async def metrics_endpoint(request: web.Request) -> web.Response:
    data = generate_latest(request.app[METRICS].registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(settings: EstimatorSettings, estimator: LengthEstimator) -> web.Application:
    """The service around an already loaded estimator (loading is the caller's I/O)."""
    app = web.Application(middlewares=[problems], client_max_size=settings.max_body_bytes)
    app[ESTIMATOR] = estimator
    app[METRICS] = EstimatorMetrics.create()

    async def executor_ctx(app: web.Application) -> AsyncIterator[None]:
        pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="estimator")
        app[EXECUTOR] = pool
        yield
        pool.shutdown(wait=True, cancel_futures=True)

    app.cleanup_ctx.append(executor_ctx)
    app.router.add_post("/v1/estimate", estimate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app
