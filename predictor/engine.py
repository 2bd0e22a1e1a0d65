"""`block engine`: an OpenAI-compatible engine twin timed by the simulator in real time.

    POST /v1/completions, /v1/chat/completions   streaming (SSE) or not, real `usage`
    GET  /v1/models, /health, /version, /metrics  (vLLM's metric names)

Each request's length is `max_tokens` when `ignore_eos` is set, otherwise a draw from
ShareGPT's reply lengths (seeded) capped by `max_tokens` and the context left, so the true
length is unknown to anyone in front of the engine. Tokens are sent when the simulated step
that produced them ends; a client that goes away is dropped from the replica at once.

Automatic prefix caching is on, as in vLLM: each request carries the hash chain of its prompt
ids and the ids it will stream, so a later prompt that repeats them (the next turn of a
conversation, a shared system prompt) skips their prefill.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.metadata
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from block.errors import InvalidRequest, NotFound
from block.predictor import problems
from block.predictor.lengths import LengthDistribution
from block.predictor.metrics import EngineMetrics
from block.predictor.settings import EngineSettings
from block.predictor.simulated import Generation, NoisyLatency, SimulatedEngine
from block.predictor.tokens import Tokens
from block.simulator.latency import LatencyModel
from block.simulator.prefix_cache import chain_hashes
from block.simulator.replica import ReplicaConfig
from block.wire.openai import (
    SSE_DONE,
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    Usage,
)

logger = logging.getLogger(__name__)

Kind = Literal["completion", "chat"]
_COMPACT = (",", ":")
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


@dataclass(frozen=True)
class Plan:
    prompt_tokens: int
    output_tokens: int
    finish_reason: Literal["stop", "length"]
    prompt_ids: tuple[int, ...] = ()  # for the prefix cache (none: no hits)


class EngineTwin:
    """Everything one engine twin holds; built in the app's startup, never at import."""

    def __init__(
        self,
        settings: EngineSettings,
        engine: SimulatedEngine,
        tokens: Tokens,
        lengths: LengthDistribution,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.tokens = tokens
        self.lengths = lengths
        self.model_name = settings.model_name
        self.max_model_len = engine.replica.max_model_len
        self.created = int(time.time())
        self._rng = random.Random(settings.seed)
        load = engine.load
        self.metrics = EngineMetrics.create(
            self.model_name,
            self._gauges,
            self._counters,
            {
                "block_size": str(load.block_size),
                "num_gpu_blocks": str(load.num_blocks),
                "enable_prefix_caching": str(settings.enable_prefix_caching),
                "model_name": self.model_name,
            },
        )
        engine.on_first_token = self._first_token
        engine.on_token = self._token
        engine.on_finish = self._finish
        engine.on_lag = self.metrics.clock_lag.observe
        self._reasons: dict[int, str] = {}

    # ------------------------------------------------------------------ metrics hooks
    def _gauges(self) -> dict[str, float]:
        load = self.engine.load
        return {
            "vllm:num_requests_running": load.num_running,
            "vllm:num_requests_waiting": load.num_waiting,
            "vllm:kv_cache_usage_perc": load.kv_usage_ratio,
            "vllm:gpu_cache_usage_perc": load.kv_usage_ratio,
        }

    def _counters(self) -> dict[str, float]:
        return {"vllm:num_preemptions": self.engine.num_preemptions}

    def _first_token(self, gen: Generation, t: float) -> None:
        m, name = self.metrics, self.model_name
        m.ttft.labels(name).observe(t - gen.arrival_s)
        m.prompt_tokens.labels(name).inc(gen.prompt_tokens)
        queue = self.engine.queue_time_s(gen)
        if queue is not None:
            m.queue.labels(name).observe(queue)

    def _token(self, gen: Generation, t: float) -> None:
        m, name = self.metrics, self.model_name
        m.generation_tokens.labels(name).inc()
        if gen.last_token_s is not None:
            m.inter_token.labels(name).observe(t - gen.last_token_s)

    def _finish(self, gen: Generation, t: float) -> None:
        m, name = self.metrics, self.model_name
        m.e2e.labels(name).observe(t - gen.arrival_s)
        reason = self._reasons.pop(gen.rid, "stop")
        m.request_success.labels(name, reason).inc()
        m.request_prompt_tokens.labels(name).observe(gen.prompt_tokens)
        m.request_generation_tokens.labels(name).observe(gen.produced)

    # ------------------------------------------------------------------ requests
    def check_model(self, model: str) -> None:
        if model not in (self.model_name, self.settings.model):
            raise NotFound(f"The model `{model}` does not exist (this engine serves "
                           f"`{self.model_name}`).")  # fmt: skip

    def plan(
        self, prompt_tokens: int, limit: int | None, ignore_eos: bool, min_tokens: int
    ) -> Plan:
        """The response length: max_tokens with ignore_eos, else a ShareGPT draw, capped."""
        room = self.max_model_len - prompt_tokens
        if room < 1 or (limit is not None and limit > room):
            asked = prompt_tokens + (limit or 1)
            raise InvalidRequest(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {asked} tokens ({prompt_tokens} in the prompt, "
                f"{limit or 1} for the completion). Please reduce the prompt or max_tokens."
            )
        cap = room if limit is None else limit
        if ignore_eos:
            return Plan(prompt_tokens, cap, "length")
        drawn = max(self.lengths.sample(self._rng), min_tokens)
        if drawn >= cap:
            return Plan(prompt_tokens, cap, "length")
        return Plan(prompt_tokens, drawn, "stop")

    def submit(self, plan: Plan) -> Generation:
        hashes = None
        if plan.prompt_ids:
            ids = list(plan.prompt_ids) + self.tokens.ids(0, plan.output_tokens)
            hashes = tuple(chain_hashes(ids, self.engine.replica.config.block_size))
        gen = self.engine.submit(plan.prompt_tokens, plan.output_tokens, hashes)
        self._reasons[gen.rid] = plan.finish_reason
        return gen

    def abort(self, gen: Generation) -> None:
        if self.engine.abort(gen):
            self._reasons.pop(gen.rid, None)
            self.metrics.request_success.labels(self.model_name, "abort").inc()


ENGINE = web.AppKey("engine_twin", EngineTwin)


# ---------------------------------------------------------------------------------- streaming
class _Chunks:
    """SSE chunk bytes for one response, from templates rendered once (a chunk per token is
    the hot path: string joins instead of a model dump each)."""

    def __init__(self, kind: Kind, rid: str, created: int, model: str) -> None:
        self.kind = kind
        base = {"id": rid, "created": created, "model": model}
        marker = "@@TEXT@@"
        if kind == "completion":
            choice = {"index": 0, "text": marker, "logprobs": None, "finish_reason": None}
            obj = "text_completion"
        else:
            choice = {"index": 0, "delta": {"content": marker}, "logprobs": None,
                      "finish_reason": None}  # fmt: skip
            obj = "chat.completion.chunk"
        self._base = {**base, "object": obj}
        chunk = json.dumps({**self._base, "choices": [choice], "usage": None}, separators=_COMPACT)
        self._prefix, self._middle = chunk.split(json.dumps(marker))
        self._prefix = "data: " + self._prefix
        # The finishing chunk differs only by its finish_reason.
        self._end_middles = {
            reason: self._middle.replace('"finish_reason":null', f'"finish_reason":"{reason}"')
            for reason in ("stop", "length")
        }

    def token(self, text: str, finish: str | None = None) -> str:
        middle = self._middle if finish is None else self._end_middles[finish]
        return self._prefix + json.dumps(text) + middle + "\n\n"

    def role(self) -> bytes:
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None}  # fmt: skip
        return _event({**self._base, "choices": [choice], "usage": None})

    def usage(self, usage: Usage) -> bytes:
        return _event({**self._base, "choices": [], "usage": usage.model_dump()})


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=_COMPACT).encode() + b"\n\n"


async def _tokens(gen: Generation) -> AsyncIterator[int]:
    """Batches of new tokens as steps end; the batch after the last token is 0."""
    while True:
        item = await gen.tokens.get()
        count = item
        done = item == 0
        while not done and not gen.tokens.empty():
            nxt = gen.tokens.get_nowait()
            count += nxt
            done = nxt == 0
        if count:
            yield count
        if done:
            return


async def _serve(
    request: web.Request,
    twin: EngineTwin,
    kind: Kind,
    plan: Plan,
    stream: bool,
    include_usage: bool,
) -> web.StreamResponse:
    gen = twin.submit(plan)
    rid = ("cmpl-" if kind == "completion" else "chatcmpl-") + uuid.uuid4().hex
    created = int(time.time())
    try:
        if stream:
            return await _stream(request, twin, kind, plan, gen, rid, created, include_usage)
        sent = 0
        async for count in _tokens(gen):
            sent += count
        return _full_response(twin, kind, plan, sent, rid, created)
    finally:
        if not gen.finished:
            twin.abort(gen)


async def _stream(
    request: web.Request,
    twin: EngineTwin,
    kind: Kind,
    plan: Plan,
    gen: Generation,
    rid: str,
    created: int,
    include_usage: bool,
) -> web.StreamResponse:
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    chunks = _Chunks(kind, rid, created, twin.model_name)
    if kind == "chat":
        await resp.write(chunks.role())
    sent = 0
    total = plan.output_tokens
    async for count in _tokens(gen):
        parts = []
        for i in range(sent, sent + count):
            finish = plan.finish_reason if i + 1 == total else None
            parts.append(chunks.token(twin.tokens.piece(i), finish))
        sent += count
        await resp.write("".join(parts).encode())
    if include_usage:
        await resp.write(chunks.usage(_usage(plan.prompt_tokens, sent)))
    await resp.write(SSE_DONE)
    await resp.write_eof()
    return resp


def _usage(prompt: int, completion: int) -> Usage:
    total = prompt + completion
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)


def _full_response(
    twin: EngineTwin, kind: Kind, plan: Plan, sent: int, rid: str, created: int
) -> web.Response:
    text = twin.tokens.text(0, sent)
    reason = plan.finish_reason if sent == plan.output_tokens else "abort"
    usage = _usage(plan.prompt_tokens, sent)
    body: CompletionResponse | ChatCompletionResponse
    if kind == "completion":
        body = CompletionResponse(
            id=rid,
            created=created,
            model=twin.model_name,
            choices=[CompletionChoice(text=text, finish_reason=reason)],
            usage=usage,
        )
    else:
        body = ChatCompletionResponse(
            id=rid,
            created=created,
            model=twin.model_name,
            choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=reason)],
            usage=usage,
        )
    return web.Response(body=body.model_dump_json().encode(), content_type="application/json")


# ---------------------------------------------------------------------------------- handlers
async def completions(request: web.Request) -> web.StreamResponse:
    twin = request.app[ENGINE]
    body = problems.validate(
        CompletionRequest, problems.parse_json(await problems.read_body(request))
    )
    twin.check_model(body.model)
    _refuse_unsupported(body.n, body.echo, body.logprobs is not None)
    prompts = body.prompts
    if len(prompts) != 1:
        raise InvalidRequest(
            f"the engine twin takes one prompt per request (got {len(prompts)}); "
            "send them as separate requests"
        )
    ids = await twin.tokens.completion_prompt_ids(prompts[0])
    plan = twin.plan(len(ids), body.max_tokens, body.ignore_eos, body.min_tokens)
    plan = dataclasses.replace(plan, prompt_ids=tuple(ids))
    return await _serve(request, twin, "completion", plan, body.stream, body.include_usage)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    twin = request.app[ENGINE]
    body = problems.validate(
        ChatCompletionRequest, problems.parse_json(await problems.read_body(request))
    )
    twin.check_model(body.model)
    _refuse_unsupported(body.n, False, bool(body.model_extra and body.model_extra.get("logprobs")))
    for i, m in enumerate(body.messages):
        parts = m.non_text_parts()
        if parts:
            raise InvalidRequest(
                f"messages.{i}.content: only text parts are supported (got {', '.join(parts)})"
            )
    ids = await twin.tokens.chat_prompt_ids(body.messages)
    plan = twin.plan(len(ids), body.token_limit, body.ignore_eos, body.min_tokens)
    plan = dataclasses.replace(plan, prompt_ids=tuple(ids))
    return await _serve(request, twin, "chat", plan, body.stream, body.include_usage)


def _refuse_unsupported(n: int, echo: bool, logprobs: bool) -> None:
    if n != 1:
        raise InvalidRequest(f"n={n}: the engine twin generates one choice per request")
    if echo or logprobs:
        raise InvalidRequest("echo and logprobs are not supported by the engine twin")


async def models(request: web.Request) -> web.Response:
    twin = request.app[ENGINE]
    card = ModelCard(id=twin.model_name, created=twin.created, max_model_len=twin.max_model_len)
    return web.json_response(text=ModelList(data=[card]).model_dump_json())


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def version(request: web.Request) -> web.Response:
    try:
        v = importlib.metadata.version("block-llm")
    except importlib.metadata.PackageNotFoundError:
        v = "unknown"
    return web.json_response({"version": f"block-engine-twin {v}"})


async def metrics(request: web.Request) -> web.Response:
    twin = request.app[ENGINE]
    body = generate_latest(twin.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# ---------------------------------------------------------------------------------- app
def build_engine(settings: EngineSettings, base: LatencyModel | None = None) -> SimulatedEngine:
    """The simulated engine for `settings` (loads the latency profile unless given)."""
    if base is None:
        base = LatencyModel.load(settings.gpu, settings.model, settings.tp)
    latency = NoisyLatency(base, settings.noise_sigma, settings.bias, settings.seed)
    config = ReplicaConfig(
        scheduler=settings.scheduler,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        max_num_seqs=settings.max_num_seqs,
        block_size=settings.block_size,
        num_blocks=settings.num_blocks,
        max_model_len=settings.max_model_len,
        enable_prefix_caching=settings.enable_prefix_caching,
    )
    return SimulatedEngine(latency, config)


def create_engine_app(
    settings: EngineSettings,
    tokens: Tokens | None = None,
    lengths: LengthDistribution | None = None,
    latency: LatencyModel | None = None,
) -> web.Application:
    """The engine twin's app. Heavy resources (profile, tokenizer, ShareGPT lengths) load at
    startup; tests may pass already-loaded ones."""
    app = problems.new_app(settings.max_body_bytes)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        engine = build_engine(settings, latency)
        twin = EngineTwin(
            settings,
            engine,
            tokens if tokens is not None else Tokens.llama3(),
            lengths if lengths is not None else LengthDistribution.sharegpt(),
        )
        engine.start()
        app[ENGINE] = twin
        gc.collect()
        gc.freeze()  # long-lived tables and data: shorter collector pauses
        load = engine.load
        logger.info(
            "engine twin: %s on %s (TP %d), %d KV blocks of %d tokens, noise sigma %.2f, bias %.2f",
            settings.model_name, settings.gpu, settings.tp, load.num_blocks, load.block_size,
            settings.noise_sigma, settings.bias,
        )  # fmt: skip
        yield
        engine.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics)
    return app
