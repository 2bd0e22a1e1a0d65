"""One reconcile of a BlockCluster: render its children, apply them, write its status.

Level-triggered and idempotent: every pass re-reads the BlockCluster, applies the full set of
children with server-side apply (so a pass with nothing to change writes nothing, a deleted
child comes back and a hand-edited field owned by the operator is set back), then derives the
status from the Deployments. Any trigger may call it (the BlockCluster's own events, a child's
event, the resync timer); passes for one cluster run one at a time.
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
from block.operator.blockcluster import children, conditions, meta, specs

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

        try:
            spec = specs.parse_spec(body.get("spec"))
        except pydantic.ValidationError as e:
            message = _validation_message(e)
            status = await self._write_status(cluster, None, previous, "InvalidSpec", message)
            return Result(Outcome.INVALID, status, message)

        try:
            for obj in children.render(cluster, spec, self.render_settings):
                await self.kube.apply(obj, field_manager=self.field_manager)
        except kube_.ApiError as e:
            if not e.is_client_error:
                raise
            message = f"the apiserver rejected a child: {e.detail}"
            status = await self._write_status(cluster, spec, previous, "ApplyRejected", message)
            return Result(Outcome.INVALID, status, message)

        status = await self._write_status(cluster, spec, previous, None, "")
        return Result(Outcome.APPLIED, status)

    async def _write_status(
        self,
        cluster: meta.ClusterRef,
        spec: specs.BlockClusterSpec | None,
        previous: specs.BlockClusterStatus,
        error_reason: str | None,
        error_message: str,
    ) -> specs.BlockClusterStatus:
        views = []
        for part in ("engine", "scheduler"):
            body = await self.kube.get(
                "apps/v1", "Deployment", cluster.namespace, meta.child_name(cluster, part)
            )
            views.append(conditions.DeploymentView.from_body(body) if body else None)
        seen = conditions.Observation(views[0], views[1], error_reason, error_message)
        status = conditions.compute(cluster, seen, previous, self.clock())
        if status != previous:
            await self.kube.patch_status(
                specs.API_VERSION,
                specs.KIND,
                cluster.namespace,
                cluster.name,
                status.model_dump(by_alias=True, exclude_none=True),
            )
        return status


def _previous_status(body: dict[str, Any]) -> specs.BlockClusterStatus:
    try:
        return specs.BlockClusterStatus.model_validate(body.get("status") or {})
    except pydantic.ValidationError:
        # A status written by something else (or an older operator) is no reason to stop.
        return specs.BlockClusterStatus()


def _validation_message(error: pydantic.ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        parts.append(f"{where}: {item['msg']}" if where else item["msg"])
    return "invalid spec: " + "; ".join(parts)
