"""Send a request to the chosen replica and relay the answer; retry elsewhere before byte one.

* The client's body goes upstream unchanged, with the length estimate in
  `x-block-output-tokens` and the request id in `x-request-id`.
* Connection failures, 5xx and 429 answers, and bodies cut short are retried on another
  replica as long as nothing has reached the client: a non-streamed answer is read whole
  first, a stream is committed only once its first chunk has arrived.
* A stream is relayed chunk by chunk as it arrives. If the replica fails after that (the
  connection drops, or the stream ends without `data: [DONE]`), the client gets an SSE error
  event in OpenAI's shape (`data: {"error": {...}}`, which OpenAI clients raise as an
  APIError) and `data: [DONE]`, and the replica backs off.
* 4xx answers other than 429 are the client's problem and pass through as they are.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from block.errors import Overloaded, Unavailable, UpstreamError
from block.scheduler.answers import Answer
from block.scheduler.autoscaling_api import DATA_EVENTS
from block.scheduler.metrics import SchedulerMetrics
from block.scheduler.parsing import Inbound
from block.scheduler.predictconn import ConnectFailed, PredictorHttpError, PredictorPool
from block.scheduler.replicas import Replica
from block.scheduler.routing import Decision, Router
from block.scheduler.settings import SchedulerSettings
from block.simulator.policies import RouteRequest

logger = logging.getLogger(__name__)
OUTPUT_TOKENS_HEADER = "x-block-output-tokens"
REPLICA_HEADER = "x-block-replica"
DONE = b"data: [DONE]"
ERROR_EVENT = b'data: {"error"'  # unambiguous: generated text inside JSON has its quotes escaped
_UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError)
# A whole (non-streamed) answer larger than this fails: logprobs of many long choices stay
# far below it.
MAX_ANSWER_BYTES = 256 << 20
_LEAN_ERRORS = (PredictorHttpError, OSError)


class _Retry(Exception):
    def __init__(self, detail: str, overloaded: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.overloaded = overloaded


@dataclass(slots=True)  # not frozen: per-request record, built on the hot path
class Outcome:
    response: Answer | web.StreamResponse  # a stream is already sent; an Answer is not
    replica: Replica
    attempts: int


class Proxy:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        router: Router,
        settings: SchedulerSettings,
        metrics: SchedulerMetrics,
    ) -> None:
        self._session = session
        self._router = router
        self._settings = settings
        self._metrics = metrics
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.connect_timeout_s,
            sock_connect=settings.connect_timeout_s,
            sock_read=settings.read_timeout_s,
        )
        # Keep-alive pools of the lean client, by replica URL: non-streamed requests.
        self._pools: dict[str, PredictorPool] = {}

    def prune(self, keep: set[str]) -> None:
        """Close the connections to replicas no longer among `keep` (replica URLs)."""
        for url in [u for u in self._pools if u not in keep]:
            self._pools.pop(url).close()

    def close(self) -> None:
        self.prune(set())

    async def forward(
        self,
        path: str,
        raw: bytes,
        inbound: Inbound,
        route: RouteRequest,
        request_id: str,
        started: float,
        request: web.Request | None = None,
    ) -> Outcome:
        """Route and relay, retrying on other replicas; `started` is the arrival loop time.
        A stream needs the aiohttp `request` to answer on; a whole answer is returned unsent."""
        tried: set[str] = set()
        failures: list[str] = []
        overloaded = 0
        for attempt in range(1, self._settings.max_attempts + 1):
            try:
                decision = await self._router.decide(route, tried, inbound.block_hashes)
            except Unavailable:
                if failures:
                    break
                raise
            if attempt > 1:
                self._metrics.retries.inc()
            try:
                response = await self._attempt(
                    path, raw, inbound, route, decision, request_id, started, request
                )
                return Outcome(response, decision.replica, attempt)
            except _Retry as e:
                tried.add(decision.replica.url)
                failures.append(f"{decision.replica.name}: {e.detail}")
                overloaded += e.overloaded
                logger.info(
                    "request %s: attempt %d on %s failed: %s",
                    request_id,
                    attempt,
                    decision.replica.name,
                    e.detail,
                )
            finally:
                decision.ticket.release()
        summary = "; ".join(failures)
        if failures and overloaded == len(failures):
            raise Overloaded(f"every replica tried is overloaded ({summary})", 1.0)
        raise UpstreamError(f"no replica could serve the request ({summary})")

    async def _attempt(
        self,
        path: str,
        raw: bytes,
        inbound: Inbound,
        route: RouteRequest,
        decision: Decision,
        request_id: str,
        started: float,
        request: web.Request | None,
    ) -> Answer | web.StreamResponse:
        replica = decision.replica
        if not inbound.stream or request is None:
            return await self._whole(path, raw, route, replica, request_id)
        headers = {
            "Content-Type": "application/json",
            "X-Request-Id": request_id,
            OUTPUT_TOKENS_HEADER: str(route.output_tokens),
        }
        try:
            resp = await self._session.post(
                replica.url + path, data=raw, headers=headers, timeout=self._timeout
            )
        except _UPSTREAM_ERRORS as e:
            self._fail(replica, "connect")
            raise _Retry(f"cannot reach it ({_short(e)})") from e
        try:
            status = resp.status
            if status >= 500 or status == 429:
                detail = await _peek(resp)
                if status >= 500:
                    self._fail(replica, "status")
                raise _Retry(f"HTTP {status}: {detail}", overloaded=status == 429)
            content_type = resp.headers.get("Content-Type", "application/json")
            out_headers = {"Content-Type": content_type, REPLICA_HEADER: replica.name}
            encoding = resp.headers.get("Content-Encoding")
            if encoding:
                out_headers["Content-Encoding"] = encoding
            if not (inbound.stream and status == 200 and "event-stream" in content_type):
                try:
                    body = await resp.read()
                except _UPSTREAM_ERRORS as e:
                    self._fail(replica, "read")
                    raise _Retry(f"answer cut short ({_short(e)})") from e
                replica.note_success()
                return Answer(status, body, out_headers)
            return await self._stream(request, resp, replica, out_headers, request_id, started)
        finally:
            resp.close()

    async def _whole(
        self, path: str, raw: bytes, route: RouteRequest, replica: Replica, request_id: str
    ) -> Answer:
        """A non-streamed request, over the lean client: the answer is read whole, so any
        failure is still retried elsewhere."""
        pool = self._pools.get(replica.url)
        if pool is None:
            pool = self._pools[replica.url] = PredictorPool(
                replica.url, self._settings.connect_timeout_s, max_response_bytes=MAX_ANSWER_BYTES
            )
        rid = request_id.encode("utf-8", "replace").replace(b"\r", b"").replace(b"\n", b"")
        extra = b"X-Request-Id: %s\r\n%s: %d\r\n" % (
            rid,
            OUTPUT_TOKENS_HEADER.encode(),
            route.output_tokens,
        )
        try:
            status, kept, body = await pool.send(path, extra, raw, self._settings.read_timeout_s)
        except ConnectFailed as e:
            self._fail(replica, "connect")
            raise _Retry(f"cannot reach it ({_short(e)})") from e
        except _LEAN_ERRORS as e:
            self._fail(replica, "read")
            raise _Retry(f"answer cut short ({_short(e)})") from e
        if status >= 500 or status == 429:
            if status >= 500:
                self._fail(replica, "status")
            detail = body[:300].decode("utf-8", "replace").strip().replace("\n", " ")
            raise _Retry(f"HTTP {status}: {detail or '(no body)'}", overloaded=status == 429)
        out_headers = {
            "Content-Type": kept.get("content-type", "application/json"),
            REPLICA_HEADER: replica.name,
        }
        encoding = kept.get("content-encoding")
        if encoding:
            out_headers["Content-Encoding"] = encoding
        replica.note_success()
        return Answer(status, body, out_headers)

    async def _stream(
        self,
        request: web.Request,
        resp: aiohttp.ClientResponse,
        replica: Replica,
        headers: dict[str, str],
        request_id: str,
        started: float,
    ) -> web.StreamResponse:
        try:
            first = await resp.content.readany()
        except _UPSTREAM_ERRORS as e:
            self._fail(replica, "read")
            raise _Retry(f"stream broke before its first byte ({_short(e)})") from e
        if not first:
            self._fail(replica, "read")
            raise _Retry("stream ended before its first byte")
        headers["Cache-Control"] = "no-cache"
        headers["X-Accel-Buffering"] = "no"
        out = web.StreamResponse(status=200, headers=headers)
        await out.prepare(request)
        self._metrics.child(self._metrics.ttft_seconds, _endpoint(request)).observe(
            asyncio.get_running_loop().time() - started
        )
        try:
            return await self._relay(resp, out, first, replica, request_id)
        except ConnectionResetError:
            # The client left: not the replica's fault. Closing the upstream response (the
            # caller does) cancels the generation behind it.
            logger.debug("request %s: the client went away mid-stream", request_id)
            return out

    async def _relay(
        self,
        resp: aiohttp.ClientResponse,
        out: web.StreamResponse,
        first: bytes,
        replica: Replica,
        request_id: str,
    ) -> web.StreamResponse:
        await out.write(first)
        tail = first[-64:]
        broken: str | None = None
        relayed_error = ERROR_EVENT in first
        events = first.count(b"data: ")  # about one per token: the autoscaler's size mix
        while True:
            try:
                chunk = await resp.content.readany()
            except _UPSTREAM_ERRORS as e:
                broken = _short(e)
                break
            if not chunk:
                break
            await out.write(chunk)  # a client gone raises ConnectionResetError
            events += chunk.count(b"data: ")
            window = tail + chunk
            # The sidecar reports an engine that died mid-stream with an error event of its
            # own; the client has it already, the replica is still to blame.
            relayed_error = relayed_error or ERROR_EVENT in window
            tail = window[-64:]
        if broken is None and DONE not in tail:
            broken = "the replica sent an error event" if relayed_error else "no [DONE]"
        if broken is not None:
            self._fail(replica, "stream")
            self._metrics.child(self._metrics.stream_errors, replica.name).inc()
            logger.warning("request %s: stream from %s broke: %s", request_id, replica.name, broken)
            if not relayed_error:
                await out.write(error_event(f"the replica serving this stream failed: {broken}"))
        else:
            replica.note_success()
            out[DATA_EVENTS] = events
        await out.write_eof()
        return out

    def _fail(self, replica: Replica, reason: str) -> None:
        self._metrics.child(self._metrics.upstream_errors, replica.name, reason).inc()
        backoff = replica.note_failure(
            asyncio.get_running_loop().time(),
            self._settings.failure_backoff_s,
            self._settings.failure_backoff_max_s,
        )
        logger.info("replica %s failed (%s); avoided for %.1f s", replica.name, reason, backoff)


def error_event(message: str, code: int = 502) -> bytes:
    """An SSE error event in the shape OpenAI clients raise, then the end marker."""
    payload = {"error": {"message": message, "type": "upstream_error", "code": code}}
    return b"data: " + json.dumps(payload).encode() + b"\n\n" + DONE + b"\n\n"


async def _peek(resp: aiohttp.ClientResponse, limit: int = 300) -> str:
    try:
        data = await resp.content.read(limit)
    except _UPSTREAM_ERRORS:
        return "(no body)"
    return data.decode("utf-8", "replace").strip().replace("\n", " ") or "(no body)"


def _endpoint(request: web.Request) -> str:
    return "chat" if request.path.endswith("chat/completions") else "completions"


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]
