"""The operator's few Kubernetes calls: server-side apply, create, get, status and scale
patches, and whether the cluster serves an API (discovery).

`Kube` is the seam the reconciler depends on; `ClientKube` implements it over the official
client's `ApiClient` (its transport, authentication and TLS), building request paths from a
small table of the kinds the operator touches. The official client is synchronous, so calls
run in worker threads with an explicit timeout each.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any, Protocol

from block.errors import UpstreamError

RawObject = dict[str, Any]

# (apiVersion, kind) -> plural resource name. Only what the operator reads or writes.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "Secret"): "secrets",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("apps/v1", "Deployment"): "deployments",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("block.dev/v1alpha1", "BlockCluster"): "blockclusters",
    ("inference.networking.k8s.io/v1", "InferencePool"): "inferencepools",
}

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
MERGE_PATCH_CONTENT_TYPE = "application/merge-patch+json"


class ApiError(UpstreamError):
    """The apiserver refused a request; `code` is its HTTP status (0: no answer), `causes` the
    reasons its Status gave (`details.causes[].reason`)."""

    def __init__(self, code: int, detail: str, causes: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.code = code
        self.causes = causes

    @property
    def is_client_error(self) -> bool:
        """The request itself was wrong (retrying the same one will not help)."""
        return 400 <= self.code < 500 and self.code not in (408, 409, 429)

    @property
    def already_exists(self) -> bool:
        return self.code == 409

    @property
    def namespace_terminating(self) -> bool:
        """Refused because the namespace is being deleted: nothing new may be created there."""
        return self.code == 403 and "NamespaceTerminating" in self.causes


class Kube(Protocol):
    async def apply(self, obj: RawObject, *, field_manager: str) -> RawObject: ...

    async def create(self, obj: RawObject, *, field_manager: str) -> RawObject:
        """POST `obj`; `ApiError` with code 409 if it exists already (nothing is changed)."""
        ...

    async def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> RawObject | None: ...

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: RawObject
    ) -> RawObject: ...

    async def scale(
        self, api_version: str, kind: str, namespace: str, name: str, replicas: int
    ) -> RawObject: ...

    async def serves(self, api_version: str, plural: str) -> bool:
        """Whether the apiserver serves `plural` in `api_version` now (a CRD installed and
        established, or a built-in API)."""
        ...


def group_version_path(api_version: str) -> str:
    return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


def object_path(api_version: str, kind: str, namespace: str, name: str) -> str:
    try:
        plural = PLURALS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"the operator does not handle {kind} ({api_version})") from None
    return f"{group_version_path(api_version)}/namespaces/{namespace}/{plural}/{name}"


def _error(status: int, data: bytes | None) -> ApiError:
    """The error an apiserver answer describes (its Status object, if it sent one)."""
    try:
        body = json.loads(data or b"")
    except ValueError:
        return ApiError(status, f"HTTP {status}: {(data or b'').decode(errors='replace')[:200]}")
    if not isinstance(body, dict):
        return ApiError(status, f"HTTP {status}")
    causes = (body.get("details") or {}).get("causes") or []
    reasons = tuple(str(c["reason"]) for c in causes if isinstance(c, dict) and c.get("reason"))
    return ApiError(status, str(body.get("message") or f"HTTP {status}"), reasons)


def _present(result: RawObject | None, path: str) -> RawObject:
    if result is None:  # only a GET maps 404 to None; a PATCH that says 404 raised already
        raise ApiError(404, f"{path} not found")
    return result


@dataclasses.dataclass
class ClientKube:
    """`Kube` over `kubernetes.client.ApiClient` (any configured one: kubeconfig, in-cluster)."""

    api_client: Any
    timeout_s: float = 30.0

    def _request_sync(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: RawObject | None = None,
        content_type: str = "application/json",
    ) -> RawObject | None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        params = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api_client.call_api(*params, _request_timeout=self.timeout_s)
            data = response.read()
        except (ApiException, HTTPError, OSError) as e:
            raise ApiError(0, f"{method} {path}: no answer from the apiserver: {e}") from e
        if response.status == 404 and method == "GET":
            return None
        if not 200 <= response.status < 300:
            raise _error(response.status, data)
        result: RawObject = json.loads(data)
        return result

    async def _request(self, method: str, path: str, **kwargs: Any) -> RawObject | None:
        return await asyncio.to_thread(self._request_sync, method, path, **kwargs)

    async def apply(self, obj: RawObject, *, field_manager: str) -> RawObject:
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        # force: the operator owns these fields; a person's edit to them is drift to repair.
        query = [("fieldManager", field_manager), ("force", "true")]
        result = await self._request(
            "PATCH", path, query=query, body=obj, content_type=APPLY_CONTENT_TYPE
        )
        return _present(result, path)

    async def create(self, obj: RawObject, *, field_manager: str) -> RawObject:
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        collection = path.rsplit("/", 1)[0]
        result = await self._request(
            "POST", collection, query=[("fieldManager", field_manager)], body=obj
        )
        return _present(result, collection)

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> RawObject | None:
        return await self._request("GET", object_path(api_version, kind, namespace, name))

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: RawObject
    ) -> RawObject:
        path = object_path(api_version, kind, namespace, name) + "/status"
        result = await self._request(
            "PATCH", path, body={"status": status}, content_type=MERGE_PATCH_CONTENT_TYPE
        )
        return _present(result, path)

    async def scale(
        self, api_version: str, kind: str, namespace: str, name: str, replicas: int
    ) -> RawObject:
        path = object_path(api_version, kind, namespace, name) + "/scale"
        body = {"spec": {"replicas": replicas}}
        result = await self._request(
            "PATCH", path, body=body, content_type=MERGE_PATCH_CONTENT_TYPE
        )
        return _present(result, path)

    async def serves(self, api_version: str, plural: str) -> bool:
        # Discovery, which every authenticated identity may read (the system:discovery role):
        # no permission on CustomResourceDefinitions needed, and a CRD that exists but is not
        # established yet is not listed.
        found = await self._request("GET", group_version_path(api_version))
        if found is None:
            return False
        return any(r.get("name") == plural for r in found.get("resources") or [])
