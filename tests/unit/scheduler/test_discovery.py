"""Replica discovery: static URLs, EndpointSlice parsing, and the watch loop.

The watch test runs the real `kubernetes` client against a small HTTP server that answers the
two calls discovery makes (list, then watch with newline-delimited JSON events) the way the
apiserver does; a test against a real control plane lives with the operator's k8s tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from block.errors import ConfigError
from block.scheduler.discovery import KubernetesDiscovery, StaticDiscovery, static_endpoints
from block.scheduler.endpointslices import endpoints_from_slices, pick_port
from block.scheduler.replicas import Endpoint, ReplicaSet


def slice_(name: str, endpoints: list[dict], ports: list[dict] | None = None, kind: str = "IPv4"):
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "engine"}},
        "addressType": kind,
        "endpoints": endpoints,
        "ports": ports if ports is not None else [{"name": "http", "port": 8000}],
    }


def ep(addr: str, pod: str | None = None, **conditions: Any) -> dict:
    out: dict[str, Any] = {"addresses": [addr], "conditions": conditions}
    if pod:
        out["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "ns"}
    return out


def test_static_endpoints() -> None:
    got = static_endpoints(["http://127.0.0.1:8101/", "https://engine.example"])
    assert got == [
        Endpoint("127.0.0.1:8101", "http://127.0.0.1:8101"),
        Endpoint("engine.example:443", "https://engine.example"),
    ]
    with pytest.raises(ConfigError):
        static_endpoints(["http://:80"])


def test_readiness_rules() -> None:
    slices = [
        slice_(
            "engine-a",
            [
                ep("10.0.0.1", "pod-1", ready=True),
                ep("10.0.0.2", "pod-2"),  # unset ready counts as ready
                ep("10.0.0.3", "pod-3", ready=False),
                ep("10.0.0.4", "pod-4", ready=False, serving=True, terminating=True),  # draining
                {"addresses": [], "conditions": {"ready": True}},  # no address: skipped
            ],
        )
    ]
    got = {e.name: (e.url, e.ready) for e in endpoints_from_slices(slices, "http")}
    assert got == {
        "pod-1": ("http://10.0.0.1:8000", True),
        "pod-2": ("http://10.0.0.2:8000", True),
        "pod-3": ("http://10.0.0.3:8000", False),
        "pod-4": ("http://10.0.0.4:8000", False),
    }


def test_ports_ipv6_duplicates_and_names() -> None:
    slices = [
        slice_("a", [ep("fd00::1", "pod-6")], kind="IPv6"),
        slice_(
            "b",
            [ep("10.0.0.9", ready=False)],
            [{"name": "metrics", "port": 9}, {"name": "http", "port": 80}],
        ),
        # The same endpoint in two slices mid-update: ready if either says so.
        slice_("c", [ep("10.0.0.9", ready=True)], [{"name": "http", "port": 80}]),
        slice_("d", [ep("10.0.0.7")], [{"name": "grpc", "port": 1}, {"name": "x", "port": 2}]),
        slice_("e", [ep("10.0.0.8")], kind="Unknown"),
    ]
    got = endpoints_from_slices(slices, "http", "https")
    assert [(e.name, e.url, e.ready) for e in got] == [
        ("10.0.0.9:80", "https://10.0.0.9:80", True),
        ("pod-6", "https://[fd00::1]:8000", True),
    ]


def test_pick_port() -> None:
    assert pick_port([{"name": "web", "port": 8000}], "http") == 8000  # the only one
    assert pick_port([{"name": "a", "port": 1}, {"name": "http", "port": 2}], "http") == 2
    assert pick_port([{"name": "a", "port": 1}, {"name": "b", "port": 2}], "http") is None
    assert pick_port([{"name": "http", "port": None}], "http") is None
    assert pick_port([{"name": "a", "port": 1}, {"name": "b", "port": 2}], None) is None


async def test_static_discovery_feeds_the_set() -> None:
    replicas = ReplicaSet()
    await StaticDiscovery(["http://a:1", "http://b:2"]).start(replicas.update)
    assert [r.name for r in replicas.all()] == ["a:1", "b:2"]


def test_replica_set_keeps_state_across_updates() -> None:
    replicas = ReplicaSet()
    replicas.update([Endpoint("p1", "http://10.0.0.1:80"), Endpoint("p2", "http://10.0.0.2:80")])
    p1 = replicas.all()[0]
    ticket = replicas.dispatch(p1, 0.0)
    replicas.update([Endpoint("p1", "http://10.0.0.1:80", ready=False)])
    assert replicas.all() == [p1] and not p1.ready and len(p1.active) == 1
    assert replicas.routable(0.0, set()) == []
    ticket.release()
    assert not p1.active


def test_backing_off_replicas_are_offered_when_nothing_else_is() -> None:
    replicas = ReplicaSet()
    replicas.update([Endpoint("a", "http://a:1"), Endpoint("b", "http://b:1")])
    a, b = replicas.all()
    a.note_failure(now=0.0, base_s=1.0, max_s=30.0)
    assert replicas.routable(0.5, set()) == [b]
    b.note_failure(now=0.0, base_s=1.0, max_s=30.0)
    b.note_failure(now=0.0, base_s=1.0, max_s=30.0)  # second failure: 2 s
    assert replicas.routable(0.5, set()) == [a]  # backoff ends first
    assert replicas.routable(0.5, {a.url}) == [b]
    assert replicas.routable(1.5, set()) == [a]


class FakeApiserver:
    """Answers list and watch of EndpointSlices like kube-apiserver (v1 JSON)."""

    def __init__(self) -> None:
        self.slices: dict[str, dict] = {}
        self.version = 1
        self.events: asyncio.Queue[dict] = asyncio.Queue()
        self.lists = 0
        self.selectors: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(
            "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", self._endpointslices
        )
        return app

    def change(self, kind: str, obj: dict) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.slices.pop(name, None)
        else:
            self.slices[name] = obj
        self.events.put_nowait({"type": kind, "object": obj})

    async def _endpointslices(self, request: web.Request) -> web.StreamResponse:
        self.selectors.append(request.query.get("labelSelector", ""))
        if request.query.get("watch") not in ("true", "True", "1"):
            self.lists += 1
            return web.json_response(
                {
                    "kind": "EndpointSliceList",
                    "apiVersion": "discovery.k8s.io/v1",
                    "metadata": {"resourceVersion": str(self.version)},
                    "items": list(self.slices.values()),
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        timeout = float(request.query.get("timeoutSeconds", "5"))
        try:
            while True:
                event = await asyncio.wait_for(self.events.get(), timeout)
                await resp.write(json.dumps(event).encode() + b"\n")
        except TimeoutError:
            pass
        await resp.write_eof()
        return resp


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[FakeApiserver, Any]]:
    from kubernetes import client

    fake = FakeApiserver()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    config = client.Configuration()
    config.host = str(server.make_url("")).rstrip("/")
    api_client = client.ApiClient(config)
    yield fake, api_client
    await server.close()


async def wait_for(cond: Any, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_watch_follows_endpointslice_changes(apiserver: Any) -> None:
    fake, api_client = apiserver
    fake.slices["engine-abc"] = slice_("engine-abc", [ep("10.0.0.1", "pod-1", ready=True)])
    replicas = ReplicaSet()
    disc = KubernetesDiscovery("engine", "ns", "http", api_client=api_client, watch_timeout_s=1)
    await disc.start(replicas.update)
    try:
        # The first list is in before start() returns.
        assert [(r.name, r.ready) for r in replicas.all()] == [("pod-1", True)]
        assert fake.selectors[0] == "kubernetes.io/service-name=engine"
        # A second pod comes up not ready, then turns ready; the first starts terminating.
        fake.change(
            "MODIFIED",
            slice_(
                "engine-abc",
                [ep("10.0.0.1", "pod-1", ready=True), ep("10.0.0.2", "pod-2", ready=False)],
            ),
        )
        await wait_for(lambda: len(replicas.all()) == 2)
        assert [(r.name, r.ready) for r in replicas.all()] == [("pod-1", True), ("pod-2", False)]
        fake.change(
            "MODIFIED",
            slice_(
                "engine-abc",
                [
                    ep("10.0.0.1", "pod-1", ready=False, terminating=True),
                    ep("10.0.0.2", "pod-2", ready=True),
                ],
            ),
        )
        await wait_for(lambda: [r.ready for r in replicas.all()] == [False, True])
        fake.change("ADDED", slice_("engine-xyz", [ep("10.0.0.3", "pod-3")]))
        await wait_for(lambda: len(replicas.all()) == 3)
        fake.change("DELETED", slice_("engine-abc", []))
        await wait_for(lambda: [r.name for r in replicas.all()] == ["pod-3"])
        # When the server ends the watch, discovery lists again and keeps going.
        await wait_for(lambda: fake.lists >= 2, timeout_s=8)
        fake.change("ADDED", slice_("engine-new", [ep("10.0.0.4", "pod-4")]))
        await wait_for(lambda: len(replicas.all()) == 2)
    finally:
        await disc.stop()


async def test_watch_survives_an_unreachable_apiserver() -> None:
    from kubernetes import client

    config = client.Configuration()
    config.host = "http://127.0.0.1:9"  # discard port: nothing answers
    disc = KubernetesDiscovery(
        "engine", "ns", "http", api_client=client.ApiClient(config), first_sync_timeout_s=0.3
    )
    replicas = ReplicaSet()
    await disc.start(replicas.update)  # returns after the first-sync timeout, not an error
    assert replicas.all() == []
    await disc.stop()
