"""Where replicas come from: a static list, or a watch on a Service's EndpointSlices.

The Kubernetes client (`kubernetes` package) is synchronous, so the watch runs in one daemon
thread: list, then watch from the list's resourceVersion until the server ends the watch (a
few minutes) or an error comes, then list again, with capped exponential backoff between
failures. Each change is parsed (`endpointslices`) and handed to the event loop with
`call_soon_threadsafe`; the replica set is only ever touched on the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from block.errors import ConfigError
from block.scheduler.endpointslices import (
    SERVICE_NAME_LABEL,
    RawEndpointSlice,
    endpoints_from_slices,
)
from block.scheduler.replicas import Endpoint

logger = logging.getLogger(__name__)
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
OnChange = Callable[[list[Endpoint]], None]


class Discovery(Protocol):
    async def start(self, on_change: OnChange) -> None: ...

    async def stop(self) -> None: ...


def static_endpoints(urls: list[str]) -> list[Endpoint]:
    """Each URL is one replica, named host:port."""
    out = []
    for url in urls:
        parts = urlsplit(url)
        if not parts.hostname:
            raise ConfigError(f"replica URL {url!r} has no host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        out.append(Endpoint(f"{parts.hostname}:{port}", url.rstrip("/"), True))
    return out


class StaticDiscovery:
    def __init__(self, urls: list[str]) -> None:
        self._endpoints = static_endpoints(urls)

    async def start(self, on_change: OnChange) -> None:
        on_change(list(self._endpoints))

    async def stop(self) -> None:
        return None


def default_namespace() -> str:
    try:
        return NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


def kube_api_client() -> Any:
    """An ApiClient from the in-cluster service account, else from ~/.kube/config."""
    from kubernetes import client, config

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config()  # type: ignore[no-untyped-call]
    except config.ConfigException as e:
        raise ConfigError(f"no Kubernetes credentials for discovery: {e}") from e
    return client.ApiClient()


class KubernetesDiscovery:
    """Replicas = endpoints of the EndpointSlices labelled with the Service's name."""

    def __init__(
        self,
        service: str,
        namespace: str,
        port_name: str | None,
        scheme: str = "http",
        api_client: Any = None,  # kubernetes.client.ApiClient; built from config when None
        watch_timeout_s: int = 240,
        first_sync_timeout_s: float = 10.0,
    ) -> None:
        self.service = service
        self.namespace = namespace
        self._port_name = port_name
        self._scheme = scheme
        self._api_client = api_client
        self._watch_timeout_s = watch_timeout_s
        self._first_sync_timeout_s = first_sync_timeout_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None
        self.syncs = 0  # full lists done (for tests and /v1/replicas)

    async def start(self, on_change: OnChange) -> None:
        loop = asyncio.get_running_loop()
        if self._api_client is None:
            self._api_client = await loop.run_in_executor(None, kube_api_client)
        first = asyncio.Event()

        def publish(endpoints: list[Endpoint]) -> None:
            on_change(endpoints)
            first.set()

        def hand_over(endpoints: list[Endpoint]) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(publish, endpoints)

        self._thread = threading.Thread(
            target=self._run, args=(hand_over,), name="block-discovery", daemon=True
        )
        self._thread.start()
        try:
            await asyncio.wait_for(first.wait(), self._first_sync_timeout_s)
        except TimeoutError:
            logger.warning(
                "no EndpointSlices of %s/%s listed within %.0f s; serving 503 until they are",
                self.namespace,
                self.service,
                self._first_sync_timeout_s,
            )

    async def stop(self) -> None:
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            # The thread may sit in a blocking read until the server's watch timeout; it is a
            # daemon, so give it a moment and move on.
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 1.0)

    def _run(self, hand_over: Callable[[list[Endpoint]], None]) -> None:
        from kubernetes import client, watch

        api = client.DiscoveryV1Api(self._api_client)
        selector = f"{SERVICE_NAME_LABEL}={self.service}"
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                # Raw JSON (no model objects): the parser reads the API's own field names.
                resp: Any = api.list_namespaced_endpoint_slice(
                    self.namespace,
                    label_selector=selector,
                    _preload_content=False,
                    _request_timeout=30,
                )
                listed = json.loads(resp.data)
                slices: dict[str, RawEndpointSlice] = {
                    s["metadata"]["name"]: s for s in listed.get("items") or []
                }
                self.syncs += 1
                hand_over(self._parse(slices))
                version = listed.get("metadata", {}).get("resourceVersion")
                self._watch = watch.Watch()  # type: ignore[no-untyped-call]
                for event in self._watch.stream(
                    api.list_namespaced_endpoint_slice,
                    self.namespace,
                    label_selector=selector,
                    resource_version=version,
                    timeout_seconds=self._watch_timeout_s,
                    allow_watch_bookmarks=True,
                    deserialize=False,
                    _request_timeout=self._watch_timeout_s + 30,
                ):
                    if self._stopping.is_set():
                        break
                    kind = event.get("type")
                    obj: RawEndpointSlice = event.get("object") or RawEndpointSlice()
                    name = obj.get("metadata", {}).get("name")
                    if kind in ("ADDED", "MODIFIED") and name:
                        slices[name] = obj
                    elif kind == "DELETED" and name:
                        slices.pop(name, None)
                    else:
                        continue  # BOOKMARK
                    hand_over(self._parse(slices))
                backoff = 0.5
            except Exception as e:  # any failure: list again after a pause, never die
                if self._stopping.is_set():
                    break
                logger.warning(
                    "EndpointSlice watch of %s/%s failed (%s); relisting in %.1f s",
                    self.namespace,
                    self.service,
                    str(e).splitlines()[0][:200] if str(e) else type(e).__name__,
                    backoff,
                )
                self._stopping.wait(backoff)
                backoff = min(30.0, backoff * 2)

    def _parse(self, slices: dict[str, RawEndpointSlice]) -> list[Endpoint]:
        return endpoints_from_slices(slices.values(), self._port_name, self._scheme)
