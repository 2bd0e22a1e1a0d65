"""`block epp`: Block as an Endpoint Picker behind Envoy (Gateway API Inference Extension).

Envoy carries the bytes; this decides. Each HTTP request is one bidirectional gRPC stream of
Envoy's external-processing API (`envoy.service.ext_proc.v3.ExternalProcessor/Process`), in the
Inference Extension's endpoint-picker protocol (its proposal 004):

    request headers   API key check (401 as an immediate response); requests that are not
                      completions are placed at once (least in flight), others wait for
    request body      the whole JSON body (Envoy buffers it): parsed and checked as the sidecar
                      will, routed by the `Router` (predictor fan-out, fallbacks, admission),
                      answered with `x-gateway-destination-endpoint: ip:port[,ip:port...]` (the
                      choice, then fallbacks Envoy retries in order) and the same value in
                      dynamic metadata `envoy.lb`; 400/413/429/503 as immediate responses
    response headers  the status, and the endpoint that served it
                      (`x-gateway-destination-endpoint-served`): a retry moved the request, so
                      the first choice failed and backs off
    end of stream     Envoy closes the gRPC stream when the HTTP request is over: the ticket
                      that counts it in flight is released (no message per streamed chunk)

The data plane may narrow the choice with a subset hint (filter metadata
`envoy.lb.subset_hint`, key `x-gateway-destination-endpoint-subset`, a list of ip:port); none of
them routable is a 503. Health: gRPC health service names `liveness`, `readiness` and the
ext_proc service's own name.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from block.errors import BlockError, InvalidRequest, Unavailable
from block.scheduler import answers, parsing
from block.scheduler.autoscaling_api import AUTOSCALING, Autoscaling
from block.scheduler.epp_protocol import (
    DESTINATION,
    LB_NAMESPACE,
    OUTPUT_TOKENS_HEADER,
    PER_TRY_TIMEOUT_HEADER,
    PICKER_DETAILS_PREFIX,
    SERVED,
    SUBSET,
    SUBSET_NAMESPACE,
)
from block.scheduler.replicas import Replica, Ticket
from block.scheduler.routing import Decision
from block.scheduler.service import GATEWAY, KEYS, Gateway
from block.simulator.policies import RouteRequest

logger = logging.getLogger(__name__)

COMPLETION_PATHS: dict[str, parsing.Endpoint] = {
    "/v1/completions": "completions",
    "/v1/chat/completions": "chat",
}
# Envoy forwards a client's copy of the picker's headers unless the picker overwrites or
# removes it: a client must not choose its own replica. The gateway's API keys are the
# gateway's: they do not travel on to the replicas.
_STRIP = (DESTINATION, OUTPUT_TOKENS_HEADER)
_CREDENTIALS = ("authorization", "x-api-key")


def _continue_headers(remove: tuple[str, ...]) -> ext_proc.ProcessingResponse:
    return ext_proc.ProcessingResponse(
        request_headers=ext_proc.HeadersResponse(
            response=ext_proc.CommonResponse(
                header_mutation=ext_proc.HeaderMutation(remove_headers=list(remove))
            )
        )
    )


# A 429 a replica answered without saying when to come back: clients are told to wait 1 s.
_RETRY_AFTER = ext_proc.ProcessingResponse(
    response_headers=ext_proc.HeadersResponse(
        response=ext_proc.CommonResponse(
            header_mutation=ext_proc.HeaderMutation(
                set_headers=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key="retry-after", raw_value=b"1")
                    )
                ]
            )
        )
    )
)
_CONTINUE_BODY = ext_proc.ProcessingResponse(request_body=ext_proc.BodyResponse())
_CONTINUE_RESPONSE_HEADERS = ext_proc.ProcessingResponse(
    response_headers=ext_proc.HeadersResponse()
)
_CONTINUE_RESPONSE_BODY = ext_proc.ProcessingResponse(response_body=ext_proc.BodyResponse())
_CONTINUE_REQUEST_TRAILERS = ext_proc.ProcessingResponse(
    request_trailers=ext_proc.TrailersResponse()
)
_CONTINUE_RESPONSE_TRAILERS = ext_proc.ProcessingResponse(
    response_trailers=ext_proc.TrailersResponse()
)


@dataclass(slots=True)  # not frozen: per-request record, updated phase by phase
class Exchange:
    """One HTTP request as the picker follows it through its ext_proc stream."""

    started: float
    request_id: str = ""
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    endpoint: parsing.Endpoint | None = None  # a completions endpoint, once known
    tickets: list[Ticket] = field(default_factory=list)  # released when the stream ends
    chosen: Replica | None = None
    status: int = 0
    stream: bool = False


class EndpointPicker(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """The ext_proc servicer. It reads the gateway state `create_app` builds at start-up
    (`app[GATEWAY]`), so the admin app and this share one `ReplicaSet`, router and metrics."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._keys = app.get(KEYS)
        # Removed from what goes upstream: a client's own destination header, and the
        # gateway's API keys (when it has keys, they are not the replicas' business).
        self._strip = _STRIP + (_CREDENTIALS if self._keys is not None else ())
        self._continue_headers = _continue_headers(self._strip)

    @property
    def _gw(self) -> Gateway:
        return self._app[GATEWAY]

    async def Process(
        self,
        request_iterator: AsyncIterator[ext_proc.ProcessingRequest],
        context: grpc.aio.ServicerContext[ext_proc.ProcessingRequest, ext_proc.ProcessingResponse],
    ) -> AsyncIterator[ext_proc.ProcessingResponse]:
        gw = self._gw
        ex = Exchange(started=asyncio.get_running_loop().time())
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("request")
                if kind == "request_headers":
                    out = await self._request_headers(gw, ex, message)
                elif kind == "request_body":
                    out = await self._request_body(gw, ex, message)
                elif kind == "response_headers":
                    out = self._response_headers(gw, ex, message.response_headers)
                elif kind == "response_body":
                    out = _CONTINUE_RESPONSE_BODY
                elif kind == "request_trailers":
                    out = _CONTINUE_REQUEST_TRAILERS
                else:
                    out = _CONTINUE_RESPONSE_TRAILERS
                yield out
        finally:
            self._finish(gw, ex)

    # The phases.

    async def _request_headers(
        self, gw: Gateway, ex: Exchange, message: ext_proc.ProcessingRequest
    ) -> ext_proc.ProcessingResponse:
        headers = _headers(message.request_headers.headers.headers)
        method = headers.get(":method", "")
        placed = self._admit(gw, ex, message, headers, method, "request_headers")
        if placed is not None:
            return placed
        if message.request_headers.end_of_stream:
            return self._refuse(
                gw, ex, InvalidRequest("the request body is empty; send a JSON object")
            )
        return self._continue_headers

    def _admit(
        self,
        gw: Gateway,
        ex: Exchange,
        message: ext_proc.ProcessingRequest,
        headers: dict[str, str],
        method: str,
        phase: str,
    ) -> ext_proc.ProcessingResponse | None:
        """Check the request's headers; an answer unless it is a completion to route on its
        body (then None). Requests that are not completions (models, or anything else a route
        sends here) are placed at once: no body to read, no prediction to make."""
        ex.headers = headers
        ex.path = path = headers.get(":path", "").partition("?")[0] or "/"
        ex.request_id = headers.get("x-request-id") or os.urandom(16).hex()
        try:
            if self._keys is not None and path.startswith("/v1/"):
                self._keys.check(headers.get("authorization"), headers.get("x-api-key"))
        except BlockError as e:
            return self._refuse(gw, ex, e)
        endpoint = COMPLETION_PATHS.get(path)
        if endpoint is None or method != "POST":
            return self._place(gw, ex, message, phase)
        ex.endpoint = endpoint
        return None

    async def _request_body(
        self, gw: Gateway, ex: Exchange, message: ext_proc.ProcessingRequest
    ) -> ext_proc.ProcessingResponse:
        if ex.endpoint is None or ex.chosen is not None:
            return _CONTINUE_BODY  # placed on its headers already
        raw = message.request_body.body
        try:
            if len(raw) > gw.settings.max_body_bytes:
                raise _TooLarge(
                    f"the request body is {len(raw)} bytes; the limit is "
                    f"{gw.settings.max_body_bytes}"
                )
            try:  # one pass of pydantic-core over the bytes, as a rule
                body: parsing.OpenAIRequest | dict[str, Any] = parsing.validate(ex.endpoint, raw)
            except InvalidRequest:  # worded by the two-step path: not JSON, not an object...
                body = parsing.parse_json(raw)
            inbound = parsing.parse(
                ex.endpoint, body, ex.headers, gw.settings.chars_per_token, gw.default_slo
            )
            ex.stream = inbound.stream
            self._autoscaling.arrived()
            hashing = asyncio.ensure_future(gw.prompt_hashes(inbound)) if gw.tokens else None
            output_tokens = await gw.lengths.output_tokens(inbound)
            if hashing is not None:
                inbound = await hashing
            route = RouteRequest(
                inbound.prompt_tokens, output_tokens, inbound.slo_ttft_s, inbound.slo_e2e_s
            )
            exclude = self._outside_subset(gw, message)
            decision = await gw.router.decide(route, exclude, inbound.block_hashes)
        except Exception as e:  # a BlockError is the client's answer; a bug must not stall
            return self._refuse(gw, ex, e)  # Envoy's request either: a 500 problem document
        ex.tickets.append(decision.ticket)
        ex.chosen = decision.replica
        extra = {
            OUTPUT_TOKENS_HEADER: str(output_tokens),
            "x-request-id": ex.request_id,
            PER_TRY_TIMEOUT_HEADER: str(first_byte_ms(gw, inbound.stream, route, decision)),
        }
        endpoints = self._endpoints(gw, decision, exclude)
        return _destination("request_body", endpoints, extra, self._strip)

    def _response_headers(
        self, gw: Gateway, ex: Exchange, message: ext_proc.HttpHeaders
    ) -> ext_proc.ProcessingResponse:
        headers = _headers(message.headers.headers)
        try:
            ex.status = int(headers.get(":status", "0"))
        except ValueError:
            ex.status = 0
        served = headers.get(SERVED)
        chosen = ex.chosen
        now = asyncio.get_running_loop().time()
        if chosen is not None and served and served != chosen.address:
            # Envoy retried down the list: the first choice failed before its first byte.
            self._fail(gw, chosen, "retried")
            gw.metrics.retries.inc()
            moved = self._by_address(gw, served)
            if moved is not None:
                for t in ex.tickets:
                    t.release()
                ex.tickets.append(gw.replicas.dispatch(moved, now))
                ex.chosen = chosen = moved
        if chosen is not None:
            if ex.status >= 500:
                self._fail(gw, chosen, "status")
            elif 200 <= ex.status < 400:
                chosen.note_success()
        if ex.stream and ex.status == 200 and ex.endpoint is not None:
            gw.metrics.child(gw.metrics.ttft_seconds, ex.endpoint).observe(now - ex.started)
        if ex.status == 429 and "retry-after" not in headers:
            return _RETRY_AFTER
        return _CONTINUE_RESPONSE_HEADERS

    def _finish(self, gw: Gateway, ex: Exchange) -> None:
        """The stream is over: the request ended (or Envoy gave up on it)."""
        for t in ex.tickets:
            t.release()
        if ex.status:
            label = ex.endpoint or _other_label(ex.path)
            gw.metrics.child(gw.metrics.requests, label, str(ex.status)).inc()
            if ex.status < 400 and ex.endpoint is not None:
                seconds = asyncio.get_running_loop().time() - ex.started
                gw.metrics.child(gw.metrics.e2e_seconds, ex.endpoint).observe(seconds)

    # Helpers.

    @property
    def _autoscaling(self) -> Autoscaling:
        return self._app[AUTOSCALING]

    def _place(
        self, gw: Gateway, ex: Exchange, message: ext_proc.ProcessingRequest, phase: str
    ) -> ext_proc.ProcessingResponse:
        """Route a request no policy needs to read (no body, not a completion)."""
        exclude = self._outside_subset(gw, message)
        now = asyncio.get_running_loop().time()
        live = gw.replicas.routable(now, exclude)
        if not live:
            return self._refuse(gw, ex, Unavailable("no replica is ready to serve"))
        ordered = sorted(live, key=lambda r: len(r.active))
        ex.tickets.append(gw.replicas.dispatch(ordered[0], now))
        ex.chosen = ordered[0]
        picks = [r.address for r in ordered[: gw.settings.max_attempts]]
        return _destination(phase, picks, {}, self._strip)

    def _endpoints(self, gw: Gateway, decision: Decision, exclude: set[str]) -> list[str]:
        """The choice, then up to `max_attempts - 1` fallbacks: the other routable replicas
        with least in flight (Envoy tries them in order when the choice fails before its
        first byte)."""
        picks = [decision.replica.address]
        if gw.settings.max_attempts > 1:
            now = asyncio.get_running_loop().time()
            others = gw.replicas.routable(now, exclude | {decision.replica.url})
            others.sort(key=lambda r: len(r.active))
            picks += [r.address for r in others[: gw.settings.max_attempts - 1]]
        return picks

    def _outside_subset(self, gw: Gateway, message: ext_proc.ProcessingRequest) -> set[str]:
        """Replica URLs the data plane's subset hint leaves out (none without a hint)."""
        subset = subset_hint(message)
        if subset is None:
            return set()
        return {r.url for r in gw.replicas.all() if r.address not in subset}

    def _by_address(self, gw: Gateway, address: str) -> Replica | None:
        return next((r for r in gw.replicas.all() if r.address == address), None)

    def _fail(self, gw: Gateway, replica: Replica, reason: str) -> None:
        gw.metrics.child(gw.metrics.upstream_errors, replica.name, reason).inc()
        now = asyncio.get_running_loop().time()
        s = gw.settings
        backoff = replica.note_failure(now, s.failure_backoff_s, s.failure_backoff_max_s)
        logger.info("replica %s failed (%s); avoided for %.1f s", replica.name, reason, backoff)

    def _refuse(self, gw: Gateway, ex: Exchange, e: Exception) -> ext_proc.ProcessingResponse:
        """An immediate response: the problem document the gateway has always answered."""
        answer = answers.error_answer(e, ex.request_id)
        ex.status = answer.status
        set_headers = [_header(k, v) for k, v in answer.headers.items()]
        set_headers.append(_header("x-request-id", ex.request_id))
        return ext_proc.ProcessingResponse(
            immediate_response=ext_proc.ImmediateResponse(
                status=http_status_pb2.HttpStatus(code=answer.status),
                headers=ext_proc.HeaderMutation(set_headers=set_headers),
                body=answer.body,
                details=f"{PICKER_DETAILS_PREFIX}{answer.status}",
            )
        )


def first_byte_ms(gw: Gateway, stream: bool, route: RouteRequest, decision: Decision) -> int:
    """How long one attempt may take to answer (Envoy's per-try timeout, which ends at the
    response headers: a stream's first token, a whole answer's end), milliseconds."""
    s = gw.settings
    p = decision.prediction
    if stream:
        limit = max(s.first_byte_timeout_s, 4.0 * p.ttft_s if p is not None else 0.0)
    else:
        budget = s.first_byte_timeout_s + s.first_byte_per_token_s * route.output_tokens
        limit = max(budget, 4.0 * p.e2e_s if p is not None else 0.0)
    return max(1, round(1000.0 * min(limit, s.read_timeout_s)))


class _TooLarge(BlockError):
    status = 413
    title = "Payload too large"


def subset_hint(message: ext_proc.ProcessingRequest) -> frozenset[str] | None:
    """The endpoints the data plane allows (None: no hint). A list of `ip:port`, or one
    comma-separated string (what a header-to-metadata filter makes of a header)."""
    namespaces = message.metadata_context.filter_metadata
    if SUBSET_NAMESPACE not in namespaces:
        return None
    fields = namespaces[SUBSET_NAMESPACE].fields
    if SUBSET not in fields:
        return None
    value = fields[SUBSET]
    kind = value.WhichOneof("kind")
    items: Iterable[str]
    if kind == "list_value":
        items = [v.string_value for v in value.list_value.values]
    elif kind == "string_value":
        items = value.string_value.split(",")
    else:
        items = []
    return frozenset(s.strip() for s in items if s.strip())


def _destination(
    phase: str,
    endpoints: Sequence[str],
    extra: dict[str, str],
    remove: Sequence[str] = (),
) -> ext_proc.ProcessingResponse:
    """The picker's answer: the header and the same value in `envoy.lb` dynamic metadata."""
    value = ",".join(endpoints)
    set_headers = [_header(DESTINATION, value)]
    set_headers += [_header(k, v) for k, v in extra.items()]
    common = ext_proc.CommonResponse(
        header_mutation=ext_proc.HeaderMutation(
            set_headers=set_headers, remove_headers=list(remove)
        )
    )
    metadata = struct_pb2.Struct()
    metadata.get_or_create_struct(LB_NAMESPACE)[DESTINATION] = value
    if phase == "request_headers":
        return ext_proc.ProcessingResponse(
            request_headers=ext_proc.HeadersResponse(response=common), dynamic_metadata=metadata
        )
    return ext_proc.ProcessingResponse(
        request_body=ext_proc.BodyResponse(response=common), dynamic_metadata=metadata
    )


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode("utf-8", "replace")),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _headers(values: Iterable[base_pb2.HeaderValue]) -> dict[str, str]:
    """Envoy's header list as a dict (Envoy lower-cases names; it sends `raw_value`)."""
    out: dict[str, str] = {}
    for h in values:
        out[h.key] = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
    return out


def _other_label(path: str) -> str:
    return "models" if path.startswith("/v1/models") else "other"
