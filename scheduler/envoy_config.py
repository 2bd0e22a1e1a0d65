"""Envoy's bootstrap for `block gateway`: pure rendering from the gateway's settings.

One listener serves the OpenAI API. Completion routes pass Envoy's ext_proc filter, which asks
the endpoint picker (`block epp`) for the replica; the `replicas` cluster's load balancer
(`override_host`) sends the request to the picked `ip:port`, and on a failure before the first
byte Envoy retries the next endpoint of the picker's list. When the picker is down or slow,
ext_proc fails open (`failure_mode_allow`) and the same load balancer's fallback policy,
round-robin, serves the request: no 503 for want of a decision. That is counted in Envoy's
stat `http.block.ext_proc.failure_mode_allowed`.

Other routes: `/v1/models` and whatever else the replicas serve pass the picker too (API keys;
placed on the replica with least in flight); `/metrics`, `/healthz`, `/v1/replicas` and
`/v1/autoscaling/*` go to the picker's admin port (the operator and Prometheus keep their
addresses); Envoy's own Prometheus stats are at `/stats/prometheus`. Streams pass through
untouched (no body is sent to the picker in the response direction; the ext_proc stream ends
when the request does).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from block.scheduler.epp_protocol import (
    DESTINATION,
    PICKER_DETAILS_PREFIX,
    SERVED,
)

EXT_PROC = "envoy.filters.http.ext_proc"
STAT_PREFIX = "block"
# Statuses on which Envoy tries the next endpoint, before any byte reached the client.
RETRIABLE_STATUSES = (429, 500, 502, 503, 504)
_TYPE = "type.googleapis.com/"


@dataclass(frozen=True)
class EnvoyLayout:
    """Where everything is: Envoy's own ports, the picker's, and the replicas'."""

    listen_host: str
    listen_port: int
    admin_port: int  # Envoy's admin interface, loopback only
    picker_host: str
    picker_grpc_port: int
    picker_admin_port: int
    # Replicas as `ip:port` (static), or one DNS name:port that resolves to every replica (a
    # headless Service on Kubernetes): Envoy's host set, from which the picker's choice is
    # taken and over which the fallback round-robin runs.
    replicas: Sequence[str]


@dataclass(frozen=True)
class EnvoyPolicy:
    """What the gateway's settings decide about traffic."""

    max_attempts: int
    connect_timeout_s: float
    read_timeout_s: float  # longest silence from an engine mid-answer
    header_timeout_s: float  # a client's request headers, all of them
    request_timeout_s: float  # a client's whole request, body included
    picker_timeout_s: float
    max_body_bytes: int
    access_log: bool = True


def render(layout: EnvoyLayout, policy: EnvoyPolicy) -> dict[str, Any]:
    """The bootstrap, as a JSON-able dict (Envoy reads JSON as YAML)."""
    return {
        "admin": {"address": _socket("127.0.0.1", layout.admin_port)},
        "overload_manager": {
            # Without a bound Envoy warns at start and accepts connections until fds run out.
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _TYPE + "envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 50000,
                    },
                }
            ]
        },
        "static_resources": {
            "listeners": [_listener(layout, policy)],
            "clusters": [
                _picker_cluster(layout),
                _plain_cluster("picker_admin", layout.picker_host, layout.picker_admin_port),
                _plain_cluster("envoy_admin", "127.0.0.1", layout.admin_port),
                _replicas_cluster(layout, policy),
            ],
        },
    }


def _listener(layout: EnvoyLayout, policy: EnvoyPolicy) -> dict[str, Any]:
    hcm: dict[str, Any] = {
        "@type": _TYPE
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": STAT_PREFIX,
        "codec_type": "AUTO",
        # A stream may be silent while a long prompt is prefilled; the route's idle timeout
        # bounds silence from the engine, this one the whole exchange's inactivity.
        "stream_idle_timeout": _duration(policy.read_timeout_s),
        # Slow clients (a byte a second resets no idle timer here): deadlines for the headers
        # and for the whole request; 408 and a closed connection past them.
        "request_headers_timeout": _duration(policy.header_timeout_s),
        "request_timeout": _duration(policy.request_timeout_s),
        # Clients are external: Envoy drops the x-envoy-* headers they send (timeouts, retry
        # policies), so only the picker sets those.
        "use_remote_address": True,
        "internal_address_config": {"cidr_ranges": []},
        "route_config": {"name": "openai", "virtual_hosts": [_virtual_host(policy)]},
        "local_reply_config": _local_replies(policy),
        "http_filters": [_ext_proc_filter(policy), _router_filter()],
    }
    if policy.access_log:
        hcm["access_log"] = [_access_log()]
    return {
        "name": "openai",
        "address": _socket(layout.listen_host, layout.listen_port),
        # Envoy buffers a request body for the picker up to this (413 beyond).
        "per_connection_buffer_limit_bytes": policy.max_body_bytes,
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def _virtual_host(policy: EnvoyPolicy) -> dict[str, Any]:
    no_picker = {EXT_PROC: {"@type": _TYPE + _EXT_PROC_PER_ROUTE, "disabled": True}}
    admin_routes = [
        _route({"path": "/metrics"}, "picker_admin", no_picker),
        _route({"path": "/healthz"}, "picker_admin", no_picker),
        _route({"path": "/v1/replicas"}, "picker_admin", no_picker),
        _route({"prefix": "/v1/autoscaling/"}, "picker_admin", no_picker),
        _route({"path": "/stats/prometheus"}, "envoy_admin", no_picker),
    ]
    upstream = {
        "cluster": "replicas",
        "timeout": "0s",  # streams last as long as generation does
        "idle_timeout": _duration(policy.read_timeout_s),
        "retry_policy": {
            # gateway-error covers an attempt past the picker's per-try limit (no first byte).
            "retry_on": "connect-failure,refused-stream,reset-before-request,gateway-error,"
            "retriable-status-codes",
            "retriable_status_codes": list(RETRIABLE_STATUSES),
            "num_retries": policy.max_attempts - 1,
        },
    }
    served = [
        {
            "header": {"key": SERVED, "value": "%UPSTREAM_HOST%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]
    openai_routes = []
    # The picker also sees `GET /v1/models`: it checks API keys and places what no policy
    # reads on the replica with least in flight.
    for path, method in OPENAI_ROUTES:
        route: dict[str, Any] = {
            "match": {"path": path, "headers": [_method(method)]},
            "route": upstream,
            "response_headers_to_add": served,
        }
        openai_routes.append(route)
        openai_routes.append(_refusal({"path": path}, 405, f"{path} takes {method}", no_picker))
    # Nothing else of a replica (its predictor API, its metrics) is reachable from outside.
    unknown = _refusal({"prefix": "/"}, 404, "no such endpoint on this gateway", no_picker)
    return {
        "name": "openai",
        "domains": ["*"],
        "routes": [*admin_routes, *openai_routes, unknown],
    }


OPENAI_ROUTES = (
    ("/v1/completions", "POST"),
    ("/v1/chat/completions", "POST"),
    ("/v1/models", "GET"),
)


def _method(method: str) -> dict[str, Any]:
    return {"name": ":method", "string_match": {"exact": method}}


def _refusal(
    match: dict[str, str], status: int, detail: str, per_filter: dict[str, Any]
) -> dict[str, Any]:
    """A route Envoy answers itself (a local reply, worded as a problem document)."""
    return {
        "match": match,
        "direct_response": {"status": status, "body": {"inline_string": detail}},
        "typed_per_filter_config": per_filter,
    }


_EXT_PROC_PER_ROUTE = "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"


def _route(match: dict[str, str], cluster: str, per_filter: dict[str, Any]) -> dict[str, Any]:
    return {
        "match": match,
        "route": {"cluster": cluster, "timeout": "30s"},
        "typed_per_filter_config": per_filter,
    }


# Titles of the problem documents Envoy writes for its own answers (the picker's immediate
# responses carry the picker's own documents and are left alone).
LOCAL_REPLY_TITLES = {
    400: "Invalid request",
    404: "Not found",
    405: "Method not allowed",
    413: "Payload too large",
    429: "Overloaded",
    502: "Upstream error",
    503: "Unavailable",
    504: "Upstream timeout",
}


def _local_replies(policy: EnvoyPolicy) -> dict[str, Any]:
    """Envoy's own error answers (no route, body too large, no replica reachable after the
    retries...) as the same `application/problem+json` documents the picker writes."""
    not_the_picker = {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": _TYPE + "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": f"!response.code_details.startsWith('{PICKER_DETAILS_PREFIX}')",
            },
        }
    }
    mappers = []
    for status, title in [*LOCAL_REPLY_TITLES.items(), (0, "Gateway error")]:
        condition: dict[str, Any] = not_the_picker
        if status:
            code = {
                "status_code_filter": {
                    "comparison": {
                        "op": "EQ",
                        "value": {"default_value": status, "runtime_key": "block.unused"},
                    }
                }
            }
            condition = {"and_filter": {"filters": [not_the_picker, code]}}
        detail = "%LOCAL_REPLY_BODY%"
        if status == 413:  # Envoy's own words do not say what the limit is
            detail = (
                f"the request body is over the gateway's limit of {policy.max_body_bytes} bytes"
            )
        mappers.append(
            {"filter": condition, "body_format_override": _problem_format(title, detail)}
        )
    return {"mappers": mappers}


def _problem_format(title: str, detail: str) -> dict[str, Any]:
    return {
        "json_format": {
            "type": "about:blank",
            "title": title,
            "status": "%RESPONSE_CODE%",
            "detail": detail,
            "request_id": "%REQ(X-REQUEST-ID)%",
            "error": {"message": detail, "type": "gateway_error", "code": "%RESPONSE_CODE%"},
        },
        "content_type": "application/problem+json",
    }


def _ext_proc_filter(policy: EnvoyPolicy) -> dict[str, Any]:
    return {
        "name": EXT_PROC,
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": "picker"},
                "timeout": _duration(max(policy.picker_timeout_s, 1.0)),
            },
            "failure_mode_allow": True,
            # The picker sets Envoy's per-attempt time limit (x-envoy-upstream-rq-per-try-...),
            # which ext_proc may not touch by default.
            "mutation_rules": {"allow_envoy": True},
            "message_timeout": _duration(policy.picker_timeout_s),
            "processing_mode": PROCESSING_MODE,
            "metadata_options": {
                "forwarding_namespaces": {"untyped": ["envoy.lb", "envoy.lb.subset_hint"]},
                "receiving_namespaces": {"untyped": ["envoy.lb"]},
            },
        },
    }


# Headers and the whole body in; response headers back (status, who served it). No body in
# the response direction: a stream's chunks never cross the picker, whose stream ends when the
# request does. (The headers must be sent: Envoy picks the upstream when the headers pass, so
# a picker that only saw the body would decide too late.)
PROCESSING_MODE = {
    "request_header_mode": "SEND",
    "request_body_mode": "BUFFERED",
    "request_trailer_mode": "SKIP",
    "response_header_mode": "SEND",
    "response_body_mode": "NONE",
    "response_trailer_mode": "SKIP",
}


def _router_filter() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"},
    }


def _access_log() -> dict[str, Any]:
    fields = {
        "time": "%START_TIME%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "status": "%RESPONSE_CODE%",
        "flags": "%RESPONSE_FLAGS%",
        "duration_ms": "%DURATION%",
        "ttfb_ms": "%RESPONSE_DURATION%",
        "bytes_in": "%BYTES_RECEIVED%",
        "bytes_out": "%BYTES_SENT%",
        "upstream": "%UPSTREAM_HOST%",
        "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
        "request_id": "%REQ(X-REQUEST-ID)%",
    }
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"json_format": fields},
        },
    }


def _picker_cluster(layout: EnvoyLayout) -> dict[str, Any]:
    cluster = _plain_cluster("picker", layout.picker_host, layout.picker_grpc_port)
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    cluster["circuit_breakers"] = _no_circuit_breaking()
    return cluster


def _plain_cluster(name: str, host: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [_lb_endpoint(host, port)]}],
        },
    }


def _replicas_cluster(layout: EnvoyLayout, policy: EnvoyPolicy) -> dict[str, Any]:
    hosts = [split_host_port(a) for a in layout.replicas]
    static = all(_is_ip(h) for h, _ in hosts)
    cluster: dict[str, Any] = {
        "name": "replicas",
        "type": "STATIC" if static else "STRICT_DNS",
        "connect_timeout": _duration(policy.connect_timeout_s),
        "load_balancing_policy": {
            "policies": [
                {
                    "typed_extension_config": {
                        "name": "envoy.load_balancing_policies.override_host",
                        "typed_config": {
                            "@type": _TYPE + "envoy.extensions.load_balancing_policies."
                            "override_host.v3.OverrideHost",
                            "override_host_sources": [{"header": DESTINATION}],
                            "fallback_policy": {
                                "policies": [
                                    {
                                        "typed_extension_config": {
                                            "name": "envoy.load_balancing_policies.round_robin",
                                            "typed_config": {
                                                "@type": _TYPE + "envoy.extensions."
                                                "load_balancing_policies.round_robin.v3."
                                                "RoundRobin"
                                            },
                                        }
                                    }
                                ]
                            },
                        },
                    }
                }
            ]
        },
        "circuit_breakers": _no_circuit_breaking(),
        # Below the sidecars' own keep-alive (aiohttp: 75 s), so Envoy closes idle
        # connections first instead of reusing one the sidecar is closing.
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {"idle_timeout": "30s"},
                "explicit_http_config": {"http_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": "replicas",
            "endpoints": [{"lb_endpoints": [_lb_endpoint(h, p) for h, p in hosts]}],
        },
    }
    if not static:
        cluster["dns_refresh_rate"] = "5s"
        cluster["respect_dns_ttl"] = True
    return cluster


def _no_circuit_breaking() -> dict[str, Any]:
    # Envoy's defaults (1,024 requests in flight per cluster) would answer 503 to a busy
    # gateway; queues belong to the engines, admission to the picker.
    big = 1_000_000
    return {
        "thresholds": [
            {
                "max_connections": big,
                "max_pending_requests": big,
                "max_requests": big,
                "max_retries": big,
            }
        ]
    }


def _lb_endpoint(host: str, port: int) -> dict[str, Any]:
    return {"endpoint": {"address": _socket(host, port)}}


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def split_host_port(address: str) -> tuple[str, int]:
    """`ip:port`, `[v6]:port` or `name:port` -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)
