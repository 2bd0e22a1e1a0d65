"""Replicas from Kubernetes EndpointSlices (discovery.k8s.io/v1), as raw API dictionaries.

Pure parsing, no I/O: `discovery.KubernetesDiscovery` feeds it what the apiserver sends.
Rules, from the EndpointSlice API reference:

* an endpoint whose `conditions.ready` is unset counts as ready ("nil should be interpreted as
  ready"); one that is terminating gets no new requests even while still serving (draining);
* consumers use an endpoint's first address; IPv6 addresses go in brackets in URLs;
* the port is the slice port with the configured name, or the only port if there is one; a
  port without a number means "all ports" and cannot be used;
* the same endpoint may appear in two slices during updates: it is ready if either says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TypedDict

from block.scheduler.replicas import Endpoint

logger = logging.getLogger(__name__)


class RawEndpointConditions(TypedDict, total=False):
    ready: bool | None
    serving: bool | None
    terminating: bool | None


class RawObjectReference(TypedDict, total=False):
    kind: str
    name: str
    namespace: str


class RawEndpoint(TypedDict, total=False):
    addresses: list[str]
    conditions: RawEndpointConditions
    targetRef: RawObjectReference
    hostname: str
    nodeName: str


class RawEndpointPort(TypedDict, total=False):
    name: str | None
    port: int | None
    protocol: str | None


class RawMetadata(TypedDict, total=False):
    name: str
    namespace: str
    resourceVersion: str
    labels: dict[str, str]


class RawEndpointSlice(TypedDict, total=False):
    metadata: RawMetadata
    addressType: str
    endpoints: list[RawEndpoint] | None
    ports: list[RawEndpointPort] | None


SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def pick_port(ports: Iterable[RawEndpointPort], name: str | None) -> int | None:
    usable = [p for p in ports if isinstance(p.get("port"), int)]
    if name is not None:
        for p in usable:
            if p.get("name") == name:
                return p["port"]
    if len(usable) == 1:
        return usable[0]["port"]
    return None


def endpoints_from_slices(
    slices: Iterable[RawEndpointSlice], port_name: str | None, scheme: str = "http"
) -> list[Endpoint]:
    """Every endpoint of the slices as a replica, sorted by name."""
    found: dict[str, Endpoint] = {}
    for sl in slices:
        kind = sl.get("addressType")
        if kind not in ("IPv4", "IPv6", "FQDN"):
            continue
        port = pick_port(sl.get("ports") or [], port_name)
        if port is None:
            logger.warning(
                "EndpointSlice %s has no port named %r (and not exactly one port); skipped",
                sl.get("metadata", {}).get("name", "?"),
                port_name,
            )
            continue
        for ep in sl.get("endpoints") or []:
            addresses = ep.get("addresses") or []
            if not addresses:
                continue
            addr = addresses[0]
            host = f"[{addr}]" if kind == "IPv6" else addr
            url = f"{scheme}://{host}:{port}"
            cond = ep.get("conditions") or {}
            ready = cond.get("ready") is not False and cond.get("terminating") is not True
            name = (ep.get("targetRef") or {}).get("name") or ep.get("hostname") or f"{host}:{port}"
            prev = found.get(url)
            found[url] = Endpoint(name, url, ready or (prev is not None and prev.ready))
    return sorted(found.values(), key=lambda e: (e.name, e.url))
