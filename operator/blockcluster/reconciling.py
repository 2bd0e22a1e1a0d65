"""One reconcile of a BlockCluster: render its children, apply them, write its status.

Level-triggered and idempotent: every pass re-reads the BlockCluster, asks the apiserver
whether it serves the InferencePool API (discovery: a CRD installed later is picked up by the
next pass, at the latest the resync timer's), creates the admin-token Secret if it is absent
(never applied over: its token is random and must stay), applies the full set of children with
server-side apply (so a pass with nothing to change writes nothing, a deleted child comes back
and a hand-edited field owned by the operator is set back), then derives the status from the
Deployments. Any trigger may call it (the BlockCluster's own events, a child's event, the
resync timer); passes for one cluster run one at a time.

What the apiserver refuses is reported, never only logged: the status says which child failed
and the apiserver's message (`ApplyRejected` for a refusal that retrying cannot cure, which
waits for a spec change; `ApplyFailed` otherwise, raised again so the handler retries with
backoff). A missing API-key Secret (`spec.scheduler.apiKeys`) keeps the gateway's pods from
starting: the cluster is applied but not Ready (`SecretMissing`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import logging
from collections.abc import Callable
from typing import Any

import pydantic

from block.operator import kube as kube_
from block.operator.blockcluster import (
    children,
    conditions,
    epp_objects,
    meta,
    pool_objects,
    secret_objects,
    specs,
)

logger = logging.getLogger(__name__)

ClusterKey = tuple[str, str]  # (namespace, name)


class Outcome(enum.Enum):
    APPLIED = "applied"
    GONE = "gone"  # deleted, or being deleted: nothing to do
    INVALID = "invalid"  # the spec or a child was rejected: waits for a spec change


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    status: specs.BlockClusterStatus | None = None
    message: str = ""


class InvalidSpec(Exception):
    """The spec cannot be turned into children (not fixable by retrying)."""


@dataclasses.dataclass
class Reconciler:
    kube: kube_.Kube
    render_settings: meta.RenderSettings
    field_manager: str = "block-operator"
    clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)
    _locks: dict[ClusterKey, asyncio.Lock] = dataclasses.field(default_factory=dict)

    def _lock(self, key: ClusterKey) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def reconcile(self, namespace: str, name: str) -> Result:
        """Bring the children of `namespace/name` to its current spec; write its status.

        Raises `kube.ApiError` for failures worth retrying (apiserver unavailable, conflicts).
        """
        async with self._lock((namespace, name)):
            return await self._reconcile(namespace, name)

    async def _reconcile(self, namespace: str, name: str) -> Result:
        body = await self.kube.get(specs.API_VERSION, specs.KIND, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            # Its children go with it through the garbage collector; re-creating them now would
            # only race the collector.
            return Result(Outcome.GONE)
        cluster = meta.ClusterRef.from_body(body)
        previous = _previous_status(body)

        pool = await self.kube.serves(pool_objects.API_VERSION, pool_objects.PLURAL)
        try:
            spec = specs.parse_spec(body.get("spec"))
        except pydantic.ValidationError as e:
            message = _validation_message(e)
            status = await self._write_status(cluster, pool, previous, "InvalidSpec", message)
            return Result(Outcome.INVALID, status, message)

        try:
            token_problem = await self._ensure_admin_secret(cluster)
            for obj in children.render(cluster, spec, self.render_settings, inference_pool=pool):
                await self._apply(obj)
        except kube_.ApiError as e:
            if e.namespace_terminating:
                # Its namespace is being deleted, the cluster with it; children that do not
                # exist yet (the picker, for a CRD installed since) can no longer be created.
                return Result(Outcome.GONE)
            reason = "ApplyRejected" if e.is_client_error else "ApplyFailed"
            try:
                status = await self._write_status(cluster, pool, previous, reason, e.detail)
            except kube_.ApiError as again:
                logger.warning("cannot write the status of %s/%s: %s", namespace, name, again)
                raise e from None
            if not e.is_client_error:
                raise
            return Result(Outcome.INVALID, status, e.detail)

        missing = "; ".join(
            p for p in (token_problem, await self._missing_secrets(cluster, spec)) if p
        )
        blocked = ("SecretMissing", missing) if missing else None
        closed = spec.network_policy.enabled and not spec.network_policy.ingress_from
        status = await self._write_status(cluster, pool, previous, None, "", blocked, closed)
        return Result(Outcome.APPLIED, status)

    async def _apply(self, obj: dict[str, Any]) -> None:
        try:
            await self.kube.apply(obj, field_manager=self.field_manager)
        except kube_.ApiError as e:
            raise _naming(e, obj) from e

    async def _ensure_admin_secret(self, cluster: meta.ClusterRef) -> str:
        """Create `NAME-admin` with a new token unless it exists (never write over it); what
        is wrong with the one there (empty: nothing)."""
        name = secret_objects.admin_secret_name(cluster)
        found = await self.kube.get("v1", "Secret", cluster.namespace, name)
        if found is not None:
            if secret_objects.admin_token(found) is None:
                # Emptied by hand: the gateways refuse every admin call (the autoscaler's too).
                return f"Secret {name} holds no admin token: delete it for a new one"
            return ""
        secret = secret_objects.admin_secret(cluster, secret_objects.new_admin_token())
        try:
            await self.kube.create(secret, field_manager=self.field_manager)
        except kube_.ApiError as e:
            if not e.already_exists:  # made meanwhile (another pass, a person): keep it
                raise _naming(e, secret) from e
        return ""

    async def _missing_secrets(self, cluster: meta.ClusterRef, spec: specs.BlockClusterSpec) -> str:
        """What the gateway's pods mount and cannot find (empty: nothing)."""
        keys = spec.scheduler.api_keys
        if keys is None:
            return ""
        found = await self.kube.get("v1", "Secret", cluster.namespace, keys.secret_name)
        if found is None:
            return f"Secret {keys.secret_name} (scheduler.apiKeys) does not exist"
        if keys.key not in (found.get("data") or {}):
            return f"Secret {keys.secret_name} has no key {keys.key!r} (scheduler.apiKeys.key)"
        return ""

    async def _deployment(
        self, cluster: meta.ClusterRef, part: str
    ) -> conditions.DeploymentView | None:
        body = await self.kube.get(
            "apps/v1", "Deployment", cluster.namespace, meta.child_name(cluster, part)
        )
        return conditions.DeploymentView.from_body(body) if body else None

    async def _write_status(
        self,
        cluster: meta.ClusterRef,
        inference_pool: bool,
        previous: specs.BlockClusterStatus,
        error_reason: str | None,
        error_message: str,
        blocked: tuple[str, str] | None = None,
        pool_closed: bool = False,
    ) -> specs.BlockClusterStatus:
        seen = conditions.Observation(
            engine=await self._deployment(cluster, "engine"),
            scheduler=await self._deployment(cluster, "scheduler"),
            error_reason=error_reason,
            error_message=error_message,
            blocked=blocked,
            pool_closed=pool_closed,
            inference_pool=inference_pool,
            epp=await self._deployment(cluster, epp_objects.COMPONENT) if inference_pool else None,
        )
        status = conditions.compute(cluster, seen, previous, self.clock())
        if status != previous:
            body = status.model_dump(by_alias=True, exclude_none=True)
            # A merge patch keeps what it does not null: a pool gone with its CRD must go from
            # the status too.
            body.setdefault("inferencePool", None)
            await self.kube.patch_status(
                specs.API_VERSION, specs.KIND, cluster.namespace, cluster.name, body
            )
        return status


def _previous_status(body: dict[str, Any]) -> specs.BlockClusterStatus:
    try:
        return specs.BlockClusterStatus.model_validate(body.get("status") or {})
    except pydantic.ValidationError:
        # A status written by something else (or an older operator) is no reason to stop.
        return specs.BlockClusterStatus()


def _naming(error: kube_.ApiError, obj: dict[str, Any]) -> kube_.ApiError:
    """The same error, its message saying which child the apiserver refused."""
    what = f"{obj['kind']} {obj['metadata']['name']}"
    named = kube_.ApiError(error.code, f"applying {what}: {error.detail}", error.causes)
    return named


def _validation_message(error: pydantic.ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        parts.append(f"{where}: {item['msg']}" if where else item["msg"])
    return "invalid spec: " + "; ".join(parts)
