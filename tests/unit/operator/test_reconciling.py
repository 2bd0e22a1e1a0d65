"""One reconcile against an in-memory apiserver: what is applied with and without the
InferencePool API, and what the status says about the front doors."""

from __future__ import annotations

import datetime
import json
from typing import Any

from block.operator import kube
from block.operator.blockcluster import meta, pool_objects, reconciling, specs

NAMESPACE, NAME = "serving", "demo"


class MemoryKube:
    """Stores what is applied; serves the InferencePool API when told to."""

    def __init__(self, pool_api: bool) -> None:
        self.pool_api = pool_api
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.applied: list[tuple[str, str]] = []
        self.created: list[tuple[str, str]] = []
        self.status_patches: list[dict[str, Any]] = []
        cluster = {
            "apiVersion": specs.API_VERSION,
            "kind": specs.KIND,
            "metadata": {"name": NAME, "namespace": NAMESPACE, "uid": "u-1", "generation": 1},
            "spec": {"model": "meta-llama/Llama-2-7b-hf", "engine": {"kind": "twin"}},
        }
        self.objects[(specs.KIND, NAMESPACE, NAME)] = cluster

    async def apply(self, obj: dict[str, Any], *, field_manager: str) -> dict[str, Any]:
        assert field_manager == "block-operator"
        if obj["kind"] == pool_objects.KIND and not self.pool_api:
            raise AssertionError("an InferencePool applied where the API is not served")
        md = obj["metadata"]
        self.objects[(obj["kind"], md["namespace"], md["name"])] = obj
        self.applied.append((obj["kind"], md["name"]))
        return obj

    async def create(self, obj: dict[str, Any], *, field_manager: str) -> dict[str, Any]:
        md = obj["metadata"]
        key = (obj["kind"], md["namespace"], md["name"])
        if key in self.objects:
            raise kube.ApiError(409, f"{md['name']} already exists")
        self.objects[key] = obj
        self.created.append((obj["kind"], md["name"]))
        return obj

    async def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        self.status_patches.append(status)
        body = self.objects[(kind, namespace, name)]
        body["status"] = {**body.get("status", {}), **status}
        return body

    async def scale(self, *args: Any) -> dict[str, Any]:
        raise AssertionError("a reconcile never scales")

    async def serves(self, api_version: str, plural: str) -> bool:
        assert (api_version, plural) == ("inference.networking.k8s.io/v1", "inferencepools")
        return self.pool_api


def _reconciler(kube: MemoryKube) -> reconciling.Reconciler:
    return reconciling.Reconciler(
        kube=kube,
        render_settings=meta.RenderSettings(block_image="block:test"),
        clock=lambda: datetime.datetime(2026, 12, 6, tzinfo=datetime.UTC),
    )


async def test_without_the_pool_api_only_the_gateway_is_applied() -> None:
    kube = MemoryKube(pool_api=False)
    result = await _reconciler(kube).reconcile(NAMESPACE, NAME)
    assert result.outcome is reconciling.Outcome.APPLIED
    assert not [n for _, n in kube.applied if n.endswith(("-epp", "-pool"))]
    assert result.status is not None and result.status.front_doors == ["Gateway"]
    assert kube.status_patches[-1]["frontDoors"] == ["Gateway"]
    assert kube.status_patches[-1]["inferencePool"] is None


async def test_the_pool_api_appearing_later_adds_the_picker_and_the_pool() -> None:
    kube = MemoryKube(pool_api=False)
    reconciler = _reconciler(kube)
    await reconciler.reconcile(NAMESPACE, NAME)
    kube.pool_api = True  # the CRD was installed since
    kube.applied.clear()
    result = await reconciler.reconcile(NAMESPACE, NAME)
    assert result.outcome is reconciling.Outcome.APPLIED
    assert kube.applied[-7:] == [
        ("NetworkPolicy", "demo-epp"),
        ("ServiceAccount", "demo-epp"),
        ("Role", "demo-epp"),
        ("RoleBinding", "demo-epp"),
        ("Service", "demo-epp"),
        ("Deployment", "demo-epp"),
        ("InferencePool", "demo-pool"),
    ]
    assert result.status is not None
    assert result.status.inference_pool == "demo-pool"
    assert kube.status_patches[-1]["inferencePool"] == "demo-pool"
    # The default NetworkPolicy admits no Gateway's proxies to the sidecars: that door is not
    # open, and Ready says why.
    assert result.status.front_doors == ["Gateway"]
    ready = {c.type: c for c in result.status.conditions}["Ready"]
    assert "spec.networkPolicy.ingressFrom" in ready.message
    spec = kube.objects[(specs.KIND, NAMESPACE, NAME)]["spec"]
    spec["networkPolicy"] = {"ingressFrom": [{"namespaceSelector": {}}]}
    result = await reconciler.reconcile(NAMESPACE, NAME)
    assert result.status is not None
    assert result.status.front_doors == ["Gateway", "InferencePool"]


class TerminatingNamespaceKube(MemoryKube):
    """Existing objects may be patched; new ones are refused, as in a namespace being deleted."""

    def _refuse_new(self, obj: dict[str, Any]) -> None:
        md = obj["metadata"]
        if (obj["kind"], md["namespace"], md["name"]) not in self.objects:
            status = {
                "kind": "Status", "code": 403, "reason": "Forbidden",
                "message": f"unable to create new content in namespace {md['namespace']} "
                "because it is being terminated",
                "details": {"causes": [{"reason": "NamespaceTerminating"}]},
            }  # fmt: skip
            raise kube._error(403, json.dumps(status).encode())

    async def apply(self, obj: dict[str, Any], *, field_manager: str) -> dict[str, Any]:
        self._refuse_new(obj)
        return await super().apply(obj, field_manager=field_manager)

    async def create(self, obj: dict[str, Any], *, field_manager: str) -> dict[str, Any]:
        self._refuse_new(obj)
        return await super().create(obj, field_manager=field_manager)


async def test_a_namespace_being_deleted_is_gone_not_invalid() -> None:
    kube_api = TerminatingNamespaceKube(pool_api=True)
    result = await _reconciler(kube_api).reconcile(NAMESPACE, NAME)
    assert result.outcome is reconciling.Outcome.GONE
    assert kube_api.status_patches == []  # no Warning, no status: the cluster is going


def test_api_errors_keep_the_status_causes() -> None:
    error = kube._error(
        422, b'{"message": "bad", "details": {"causes": [{"reason": "FieldValueInvalid"}]}}'
    )
    assert (error.code, error.detail, error.causes) == (422, "bad", ("FieldValueInvalid",))
    assert not error.namespace_terminating
    assert kube._error(500, b"oops").detail == "HTTP 500: oops"
