"""The endpoint picker's state and its HTTP admin app (`block epp`, `block gateway`).

`create_app` builds what the picker decides with (replica set and discovery, health probes,
predictor client, router, length source, tokenizer), in the app's start-up, and serves beside
it (Envoy carries the OpenAI traffic; the picker is `epp.py`):

    GET  /v1/replicas                             what this picker sees of each replica
    GET  /v1/autoscaling/load, POST .../drain     the operator's autoscaler (autoscaling_api)
    GET  /healthz                                 200 while the process serves
    GET  /metrics                                 Prometheus text format (block_scheduler_*)

Errors are `application/problem+json` (RFC 9457) with an OpenAI-style `error` member too, so
OpenAI client libraries show the message. A picker keeps no state another picker would need:
any number can run side by side.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from block.predictor.tokens import Tokens
from block.scheduler import answers, autoscaling_api, health, parsing
from block.scheduler import discovery as discovery_mod
from block.scheduler.auth import AdminToken, ApiKeys
from block.scheduler.lengths import Estimator, LengthSource
from block.scheduler.metrics import SchedulerMetrics
from block.scheduler.predicting import PredictorClient
from block.scheduler.replicas import Endpoint, ReplicaSet
from block.scheduler.routing import Router, check_policies
from block.scheduler.settings import SchedulerSettings, cluster_defaults
from block.simulator.prefix_cache import chain_hashes

logger = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Prompts longer than this are tokenized in a worker thread (about 0.3 µs a character).
HASH_OFFLOAD_CHARS = 256


@dataclass
class Gateway:
    """Everything a request handler needs; built in `cleanup_ctx`, one per app."""

    settings: SchedulerSettings
    metrics: SchedulerMetrics
    replicas: ReplicaSet
    session: aiohttp.ClientSession
    predictor: PredictorClient
    router: Router
    lengths: LengthSource
    default_slo: tuple[float | None, float | None]
    discovery: discovery_mod.Discovery
    tokens: Tokens | None = None  # prompt token ids for prefix-cache hashes; None: none sent

    async def prompt_hashes(self, inbound: parsing.Inbound) -> parsing.Inbound:
        """`inbound` with the prompt's block hash chain and its exact token count, from the ids
        the sidecars compute (same tokenizer, same template); tokenized in a thread beyond a
        few hundred characters. The count must come from the same ids: a predictor refuses
        hashes that cover more tokens than the prompt it is told of (HTTP 400)."""
        if self.tokens is None or inbound.request is None:
            return inbound
        ids = await self.tokens.request_prompt_ids(inbound.request, HASH_OFFLOAD_CHARS)
        if not ids:
            return inbound
        hashes = tuple(chain_hashes(ids, self.settings.prefix_block_size)) or None
        return dataclasses.replace(inbound, block_hashes=hashes, prompt_tokens=len(ids))


SETTINGS = web.AppKey("settings", SchedulerSettings)
METRICS = web.AppKey("metrics", SchedulerMetrics)
KEYS = web.AppKey("api_keys", ApiKeys)
ADMIN = web.AppKey("admin_token", AdminToken)
AUTOSCALING_PREFIX = "/v1/autoscaling/"
GATEWAY = web.AppKey("gateway", Gateway)


def _endpoint_label(path: str) -> str:
    if path.endswith("/chat/completions"):
        return "chat"
    if path.endswith("/completions"):
        return "completions"
    if path.startswith("/v1/models"):
        return "models"
    return "other"


def _needs_admin(request: web.Request) -> bool:
    """The autoscaling API always; `/v1/replicas` (replica addresses) once the gateway has
    API keys, which mean its clients are not all trusted. `/metrics` and `/healthz` stay open
    for probes and Prometheus."""
    if request.path.startswith(AUTOSCALING_PREFIX):
        return True
    return request.path == "/v1/replicas" and request.app.get(KEYS) is not None


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every failure to problem+json by exception class, and count answers."""
    request_id = request.headers.get("X-Request-Id") or os.urandom(16).hex()
    response: web.StreamResponse
    try:
        if _needs_admin(request):
            request.app[ADMIN].check(request.headers.get("Authorization"))
        response = await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        response = answers.error_answer(e, request_id).to_response()
    except Exception as e:  # CancelledError is a BaseException: it passes
        response = answers.error_answer(e, request_id).to_response()
    metrics = request.app[METRICS]
    metrics.child(metrics.requests, _endpoint_label(request.path), str(response.status)).inc()
    return response


async def replicas_view(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    now = asyncio.get_running_loop().time()
    return web.json_response(
        {
            "policy": gw.router.policy.name,
            "fallback_policy": gw.router.fallback.name,
            "length_source": gw.lengths.name,
            "discovery": gw.settings.discover,
            "replicas": [r.describe(now) for r in gw.replicas.all()],
        }
    )


async def healthz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    now = asyncio.get_running_loop().time()
    known = gw.replicas.all()
    return web.json_response(
        {
            "status": "ok",
            "replicas": len(known),
            "routable": sum(r.routable(now) for r in known),
        }
    )


async def metrics_endpoint(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    now = asyncio.get_running_loop().time()
    states = {"routable": 0, "unready": 0, "backoff": 0, "draining": 0}
    for r in gw.replicas.all():
        if not (r.ready and r.probe_ok):
            states["unready"] += 1
        elif r.draining(now):
            states["draining"] += 1
        elif r.routable(now):
            states["routable"] += 1
        else:
            states["backoff"] += 1
    for state, n in states.items():
        gw.metrics.child(gw.metrics.replicas, state).set(n)
    gw.metrics.set_inflight({r.name: len(r.active) for r in gw.replicas.all()})
    return web.Response(
        body=generate_latest(gw.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def make_discovery(settings: SchedulerSettings) -> discovery_mod.Discovery:
    if settings.discover == "k8s":
        assert settings.service is not None  # checked by the settings
        return discovery_mod.KubernetesDiscovery(
            settings.service,
            settings.namespace or discovery_mod.default_namespace(),
            settings.port_name,
            settings.scheme,
        )
    return discovery_mod.StaticDiscovery(settings.replicas)


def create_app(
    settings: SchedulerSettings,
    estimator: Estimator | None = None,
    discovery: discovery_mod.Discovery | None = None,
    tokens: Tokens | None = None,
) -> web.Application:
    """The picker's admin app, whose start-up builds the state the picker decides with.
    `estimator` is an already loaded length estimator (None: the prior); `discovery` defaults
    to what the settings say; `tokens` an already loaded tokenizer for prefix hashes (None:
    loaded at start-up when the settings and the policy use them)."""
    check_policies(settings)  # a bad name fails here, not at start-up
    disc = discovery or make_discovery(settings)
    app = web.Application(middlewares=[problems], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = metrics = SchedulerMetrics.create()
    if settings.api_keys_file is not None:
        keys = ApiKeys(settings.api_keys_file)
        keys.load()
        app[KEYS] = keys
    app[ADMIN] = admin = AdminToken(settings.admin_token_file)
    admin.load()
    defaults = cluster_defaults(settings.cluster_config)
    default_slo = (
        settings.slo_ttft_s if settings.slo_ttft_s is not None else defaults.slo_ttft_s,
        settings.slo_e2e_s if settings.slo_e2e_s is not None else defaults.slo_e2e_s,
    )

    async def gateway_ctx(app: web.Application) -> AsyncIterator[None]:
        replicas = ReplicaSet()
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, keepalive_timeout=30),
            auto_decompress=False,
        )
        pool = ThreadPoolExecutor(settings.estimator_workers, thread_name_prefix="estimator")
        predictor = PredictorClient(settings, metrics)
        rng = random.Random(settings.seed)
        router = Router(settings, replicas, predictor, metrics, rng)
        tok = None
        if settings.prefix_hashes and router.uses_prefix_hashes:
            loop = asyncio.get_running_loop()
            tok = tokens or await loop.run_in_executor(None, Tokens.llama3)
        gw = Gateway(
            settings=settings,
            metrics=metrics,
            replicas=replicas,
            session=session,
            predictor=predictor,
            router=router,
            lengths=LengthSource(
                estimator,
                settings.prior_output_tokens,
                pool,
                metrics,
                settings.estimator_max_queue,
            ),
            default_slo=default_slo,
            discovery=disc,
            tokens=tok,
        )
        app[GATEWAY] = gw
        prober: asyncio.Task[None] | None = None
        try:

            def on_change(endpoints: list[Endpoint]) -> None:
                replicas.update(endpoints)
                urls = {r.url for r in replicas.all()}
                predictor.prune(urls)

            await disc.start(on_change)
            if settings.health_interval_s > 0:
                prober = asyncio.create_task(
                    health.probe_forever(session, replicas, settings.health_interval_s)
                )
            logger.info(
                "picker up: policy %s, %d replica(s), lengths from %s",
                router.policy.name,
                len(replicas.all()),
                gw.lengths.name,
            )
            yield
        finally:
            if prober is not None:
                prober.cancel()
                await asyncio.gather(prober, return_exceptions=True)
            await disc.stop()
            await predictor.close()
            await session.close()
            pool.shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(gateway_ctx)
    app.router.add_get("/v1/replicas", replicas_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    autoscaling_api.install(app, settings, metrics.registry, lambda: app.get(GATEWAY))
    return app
