"""The sidecar's request path: the OpenAI API proxied to the engine, feeding the live twin.

Each request is validated and its prompt counted (the same template the engine uses), enters
the twin with its assumed length (`x-block-output-tokens`, or the exact `max_tokens` of an
`ignore_eos` request, or the prior), and is forwarded byte for byte. Streams pass through as
each chunk arrives; the sidecar reads the SSE events on the side to count tokens (one per
content chunk, as vLLM streams them) and the final usage. A client that disconnects cancels
the upstream request (closing it makes the engine abort); an engine that is down or dies
mid-stream gives a clear 503/502, or an SSE error event once the stream has started.

Prefix cache: the prompt's token ids give its block hash chain, which the twin's request
carries (hits and registration as in the engine). When the request completes, the answer's
text (streamed content, or the body's) is tokenized after the prompt's last partial block and
the chain extended over it: the blocks the engine keeps of prompt + answer. Re-tokenizing text
approximates the generated ids (a token split differently at the seam changes that block's
hash onward, so the twin under-counts hits, never over-counts them); a chat answer is followed
by the template's end-of-turn token, as the next turn's prompt will render it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import aiohttp
from aiohttp import web

from block.errors import InvalidRequest, Unavailable, UpstreamError
from block.predictor import problems
from block.predictor.metrics import PredictorMetrics
from block.predictor.settings import PredictorSettings
from block.predictor.tokens import LONGEST_TOKEN_CHARS, Tokens
from block.predictor.twin import LiveTwin, Outcome, Tracked
from block.simulator.prefix_cache import chain_hashes
from block.wire.openai import (
    MAX_TOKENS_LIMIT,
    OUTPUT_TOKENS_HEADER,
    ChatCompletionRequest,
    CompletionRequest,
)

logger = logging.getLogger(__name__)

Kind = Literal["completion", "chat"]
# Prompts longer than this are tokenized in a worker thread while the request goes out.
COUNT_OFFLOAD_CHARS = 256
# Sizes of completed requests kept for the autoscaler's load reports (`/v1/state`).
RECENT_SIZES = 128
# Request headers passed to the engine (hop-by-hop ones and Host are not).
FORWARD_HEADERS = ("authorization", "accept", "x-request-id", "traceparent")


class Proxy:
    """Forwards OpenAI requests to one engine and tells the twin what happens to them."""

    def __init__(
        self,
        settings: PredictorSettings,
        twin: LiveTwin,
        tokens: Tokens,
        session: aiohttp.ClientSession,
        metrics: PredictorMetrics,
    ) -> None:
        self.settings = settings
        self.twin = twin
        self.tokens = tokens
        self.session = session
        self.metrics = metrics
        self.timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
        )
        self._remembering: set[asyncio.Future[None]] = set()  # answers being hashed
        # Told of every completed request with its arrival prediction (the calibrator).
        self.on_outcome: Callable[[Outcome], None] | None = None
        # [prompt_tokens, output_tokens] of the last requests completed, newest last: the
        # request-size mix the autoscaler simulates (every gateway's requests pass here once).
        self.recent_sizes: collections.deque[tuple[int, int]] = collections.deque(
            maxlen=RECENT_SIZES
        )

    # ------------------------------------------------------------------ entry
    async def handle(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        raw = await problems.read_body(request)
        data = problems.parse_json(raw)
        estimate = _estimate_header(request)
        counting: Awaitable[list[int]] | None = None
        offload = COUNT_OFFLOAD_CHARS
        if kind == "completion":
            comp = problems.validate(CompletionRequest, data)
            prompts = comp.prompts
            self._refuse_unfittable(sum(len(p) for p in prompts if isinstance(p, str)))
            # A batch of prompts is several engine requests; the twin does not follow those.
            if len(prompts) == 1 and comp.n == 1:
                counting = self.tokens.completion_prompt_ids(prompts[0], offload)
            limit, stream, ignore_eos = comp.max_tokens, comp.stream, comp.ignore_eos
        else:
            chat = problems.validate(ChatCompletionRequest, data)
            self._refuse_unfittable(sum(len(m.text()) for m in chat.messages))
            if chat.n == 1:
                counting = self.tokens.chat_prompt_ids(chat.messages, offload)
            limit, stream, ignore_eos = chat.token_limit, chat.stream, chat.ignore_eos
        exact = ignore_eos and limit is not None and self.settings.trust_ignore_eos
        flight = _Flight(self.twin, self.twin.now(), stream, exact, kind == "chat")
        count_task: asyncio.Future[list[int]] | None = None
        if counting is not None:
            # The prompt is counted while the request is already on its way to the engine
            # (long prompts take milliseconds to tokenize); the twin hears of it when the
            # count is ready, with the time it was sent.
            count_task = asyncio.ensure_future(counting)
            count_task.add_done_callback(
                lambda f: flight.counted(f, lambda p: self.twin.assume(p, limit, estimate, exact))
            )
        path = "/v1/completions" if kind == "completion" else "/v1/chat/completions"
        try:
            return await self._forward(request, path, raw, flight)
        finally:
            if count_task is not None and not count_task.done():
                count_task.cancel()
            if flight.close():
                self.metrics.requests.labels("cancelled").inc()

    def _refuse_unfittable(self, chars: int) -> None:
        """A 400, before any tokenizing, for text too long to fit the context whatever it
        says (each token is at most LONGEST_TOKEN_CHARS characters)."""
        context = self.twin.max_model_len
        if chars > context * LONGEST_TOKEN_CHARS:
            raise InvalidRequest(
                f"the prompt is {chars} characters: more than this model's context of "
                f"{context} tokens can hold (at most {LONGEST_TOKEN_CHARS} characters a token)"
            )

    # ------------------------------------------------------------------ upstream
    async def _forward(
        self, request: web.Request, path: str, raw: bytes, flight: _Flight
    ) -> web.StreamResponse:
        url = self.settings.engine_url + path
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARD_HEADERS}
        # The body was parsed as JSON here, whatever the client labelled it (curl sends a
        # form type by default); the engine gets the right label.
        headers["Content-Type"] = "application/json"
        try:
            async with self.session.post(
                url, data=raw, headers=headers, timeout=self.timeout
            ) as up:
                flight.predict()  # the engine has it: now predict it, off the path
                if up.status != 200:
                    body = await up.read()
                    self.metrics.upstream_errors.labels("status").inc()
                    self._cancel(flight, "upstream_error")
                    return web.Response(
                        status=up.status,
                        body=body,
                        headers={"Content-Type": up.headers.get("Content-Type", "text/plain")},
                    )
                if flight.streaming and up.content_type == "text/event-stream":
                    return await self._stream(request, up, flight)
                body = await up.read()
                usage, text = _usage_and_text(body)
                self._complete(flight, usage, text)
                return web.Response(
                    status=200,
                    body=body,
                    headers={"Content-Type": up.headers.get("Content-Type", "application/json")},
                )
        except aiohttp.ClientConnectorError as e:
            self.metrics.upstream_errors.labels("connect").inc()
            self._cancel(flight, "upstream_error")
            raise Unavailable(
                f"the engine at {self.settings.engine_url} is not reachable: {e.os_error}"
            ) from e
        except TimeoutError as e:
            self.metrics.upstream_errors.labels("timeout").inc()
            self._cancel(flight, "upstream_error")
            raise UpstreamError(
                f"the engine at {self.settings.engine_url} sent nothing for "
                f"{self.settings.read_timeout_s:g} s"
            ) from e
        except aiohttp.ClientError as e:
            self.metrics.upstream_errors.labels("disconnect").inc()
            self._cancel(flight, "upstream_error")
            raise UpstreamError(
                f"the engine at {self.settings.engine_url} failed: {type(e).__name__}: {e}"
            ) from e

    async def _stream(
        self, request: web.Request, up: aiohttp.ClientResponse, flight: _Flight
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        events = _EventCounter()
        try:
            async for data in up.content.iter_any():
                await resp.write(data)  # pass it on first: counting is bookkeeping
                tokens = events.feed(data)
                if tokens:
                    flight.tokens(tokens)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as e:
            if isinstance(e, ConnectionResetError):
                raise  # our client went away (aiohttp's write error), not the engine
            kind = "timeout" if isinstance(e, TimeoutError) else "disconnect"
            self.metrics.upstream_errors.labels(kind).inc()
            self._cancel(flight, "upstream_error")
            detail = (
                f"the engine at {self.settings.engine_url} stopped mid-stream after "
                f"{events.tokens} tokens ({type(e).__name__})"
            )
            logger.warning("%s", detail)
            await resp.write(b"data: " + problems.problem_bytes(502, "upstream_error", detail))
            await resp.write(b"\n\n")
            await resp.write_eof()
            return resp
        if events.done or events.usage_tokens is not None:
            self._complete(flight, events.usage_tokens, "".join(events.texts))
        else:
            self._cancel(flight, "upstream_error")
        await resp.write_eof()
        return resp

    # ------------------------------------------------------------------ accounting
    def _complete(self, flight: _Flight, completion_tokens: int | None, text: str = "") -> None:
        self.metrics.requests.labels("completed").inc()
        tracked = flight.tracked
        outcome = flight.finish(completion_tokens)
        if outcome is not None:
            if tracked is not None and outcome.output_tokens >= 1:
                self.recent_sizes.append((max(1, tracked.prompt_tokens), outcome.output_tokens))
            self._observe(outcome)
            if flight.block_hashes is not None and text:
                task = asyncio.ensure_future(self._remember(flight, text))
                self._remembering.add(task)
                task.add_done_callback(self._remembering.discard)

    async def _remember(self, flight: _Flight, text: str) -> None:
        """Extend the finished request's hash chain over its answer; the twin keeps the
        blocks as the engine does."""
        hashes = flight.block_hashes
        assert hashes is not None
        if flight.chat:
            text += self.tokens.END_OF_TURN
        ids = flight.tail + await self.tokens.encode_async(text, COUNT_OFFLOAD_CHARS)
        bs = flight.block_size
        if bs != self.twin.replica.config.block_size:
            return  # the twin adopted another block size meanwhile: these hashes mean nothing
        # The last sampled token never has its KV written before the request ends.
        more = chain_hashes(ids[:-1], bs, hashes[-1] if hashes else 0)
        self.twin.remember(hashes + tuple(more))

    def _cancel(self, flight: _Flight, outcome: str) -> None:
        self.metrics.requests.labels(outcome).inc()
        flight.close()

    def _observe(self, o: Outcome) -> None:
        p = o.predicted
        if p is None:
            return
        if self.on_outcome is not None:
            self.on_outcome(o)
        m = self.metrics
        m.e2e_error.observe(p.e2e_s - o.e2e_s)
        if o.e2e_s > 0:
            m.e2e_relative_error.observe(abs(p.e2e_s - o.e2e_s) / o.e2e_s)
        if o.ttft_s is not None:
            m.ttft_error.observe(p.ttft_s - o.ttft_s)
            if o.ttft_s > 0:
                m.ttft_relative_error.observe(abs(p.ttft_s - o.ttft_s) / o.ttft_s)


class _Flight:
    """One proxied request and its place in the twin, which it joins once its prompt is
    counted; tokens seen before that are kept and handed over then."""

    __slots__ = (
        "_pending", "block_hashes", "block_size", "chat", "closed", "exact", "first_token_s",
        "sent_s", "streaming", "tail", "tracked", "twin",
    )  # fmt: skip

    def __init__(
        self, twin: LiveTwin, sent_s: float, streaming: bool, exact: bool, chat: bool = False
    ) -> None:
        self.twin = twin
        self.chat = chat
        self.block_hashes: tuple[int, ...] | None = None  # the prompt's, once counted
        self.block_size = 0
        self.tail: list[int] = []  # prompt ids after its last full block
        self.sent_s = sent_s
        self.streaming = streaming
        self.exact = exact
        self.tracked: Tracked | None = None
        self.closed = False
        self._pending = 0
        self.first_token_s: float | None = None

    def counted(
        self, fut: asyncio.Future[list[int]], assume: Callable[[int], tuple[int, int]]
    ) -> None:
        if self.closed or fut.cancelled() or fut.exception() is not None:
            return
        ids = fut.result()
        prompt = len(ids)
        output, cap = assume(prompt)
        bs = self.twin.replica.config.block_size
        hashes = tuple(chain_hashes(ids, bs))
        self.block_hashes, self.block_size = hashes, bs
        self.tail = ids[len(hashes) * bs :]
        self.tracked = self.twin.arrive(
            prompt,
            output,
            cap,
            self.exact,
            self.streaming,
            arrival_s=self.sent_s,
            block_hashes=hashes or None,
        )
        if self.tracked is not None and self._pending:
            self.twin.token(self.tracked, self._pending, self.first_token_s)
            self._pending = 0

    def tokens(self, count: int) -> None:
        if self.tracked is not None:
            self.twin.token(self.tracked, count)
        else:
            if self.first_token_s is None:
                self.first_token_s = self.twin.now()
            self._pending += count

    def predict(self) -> None:
        if self.tracked is not None:
            self.twin.predict_arrival(self.tracked)

    def finish(self, completion_tokens: int | None) -> Outcome | None:
        self.closed = True
        t = self.tracked
        if t is None or t.done:
            return None
        return self.twin.finish(t, completion_tokens)

    def close(self) -> bool:
        """Leave the twin if still in it; True if it was (the request ended unfinished)."""
        self.closed = True
        t = self.tracked
        if t is None or t.done:
            return False
        self.twin.cancel(t)
        return True


class _EventCounter:
    """Reads an SSE stream on the side: tokens (content chunks), usage, [DONE]."""

    __slots__ = ("_buf", "done", "texts", "tokens", "usage_tokens")

    def __init__(self) -> None:
        self._buf = b""
        self.texts: list[str] = []  # the answer's content, for its prefix-cache blocks
        self.tokens = 0
        self.usage_tokens: int | None = None
        self.done = False

    def feed(self, data: bytes) -> int:
        """New tokens in the events that `data` completes."""
        buf = self._buf + data
        new = 0
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            new += self._event(buf[start:end])
            start = end + 2
        self._buf = buf[start:]
        self.tokens += new
        return new

    def _event(self, event: bytes) -> int:
        if not event.startswith(b"data:"):
            return 0
        payload = event[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return 0
        try:
            obj = json.loads(payload)
        except ValueError:
            return 0
        if not isinstance(obj, dict):
            return 0
        usage = obj.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.usage_tokens = usage["completion_tokens"]
        count = 0
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            text = choice.get("text")
            if text:
                count += 1
                if isinstance(text, str):
                    self.texts.append(text)
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict) and any(
                delta.get(k) for k in ("content", "tool_calls", "reasoning_content")
            ):
                count += 1
                content = delta.get("content")
                if isinstance(content, str):
                    self.texts.append(content)
        return count


def _estimate_header(request: web.Request) -> int | None:
    value = request.headers.get(OUTPUT_TOKENS_HEADER)
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_TOKENS_LIMIT:
        raise InvalidRequest(
            f"{OUTPUT_TOKENS_HEADER} must be an integer from 1 to {MAX_TOKENS_LIMIT} "
            f"(got {value[:40]!r})"
        )
    return n


def _usage_and_text(body: bytes) -> tuple[int | None, str]:
    """(usage.completion_tokens, the first choice's text) of a non-streamed answer."""
    try:
        obj: Any = json.loads(body)
    except ValueError:
        return None, ""
    if not isinstance(obj, dict):
        return None, ""
    usage = obj.get("usage")
    n = usage.get("completion_tokens") if isinstance(usage, dict) else None
    text: Any = ""
    choices = obj.get("choices")
    if isinstance(choices, list) and len(choices) == 1 and isinstance(choices[0], dict):
        choice = choices[0]
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else choice.get("text")
    return (n if isinstance(n, int) else None), (text if isinstance(text, str) else "")


async def models(request: web.Request, proxy: Proxy) -> web.Response:
    """`GET /v1/models`, passed through."""
    url = proxy.settings.engine_url + "/v1/models"
    try:
        async with proxy.session.get(url, timeout=proxy.timeout) as up:
            body = await up.read()
            return web.Response(
                status=up.status,
                body=body,
                headers={"Content-Type": up.headers.get("Content-Type", "application/json")},
            )
    except aiohttp.ClientConnectorError as e:
        raise Unavailable(
            f"the engine at {proxy.settings.engine_url} is not reachable: {e.os_error}"
        ) from e
    except (TimeoutError, aiohttp.ClientError) as e:
        raise UpstreamError(f"the engine at {proxy.settings.engine_url} failed: {e}") from e
