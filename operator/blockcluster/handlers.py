"""kopf handlers for BlockCluster (thin: every trigger ends in `Reconciler.reconcile`).

- The BlockCluster's own create / update / resume: reconcile, with kopf's retries for passing
  failures (backing off: `retry_delay`); an invalid spec, or a child the apiserver refuses, is
  a Warning event plus `kopf.PermanentError` (a spec change retries; so does the resync timer).
- Events of its children (labelled `app.kubernetes.io/managed-by: block-operator`): reconcile
  the owner at once, so a deleted or hand-edited child is restored and the status follows the
  Deployments' readiness.
- A resync timer per BlockCluster: reconcile (a safety net for missed events) and, when
  autoscaling is on and an advisor is installed, the autoscaler's seam.

Deletion needs no handler: the children's owner references let the garbage collector remove
them, so no finalizer blocks `kubectl delete`.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from block.operator import autoscaling, kube
from block.operator.blockcluster import children, meta, reconciling, specs
from block.operator.settings import OperatorSettings

logger = logging.getLogger(__name__)


def _plural(api_version: str, kind: str) -> str:
    return kube.PLURALS[(api_version, kind)]


def retry_delay(settings: OperatorSettings, retry: int) -> float:
    """Seconds before retry number `retry` + 1 (kopf counts from 0): doubling, bounded."""
    return float(min(settings.retry_delay_s * 2 ** min(retry, 32), settings.retry_max_delay_s))


def register(
    registry: kopf.OperatorRegistry,
    reconciler: reconciling.Reconciler,
    settings: OperatorSettings,
    advisor: autoscaling.ReplicaAdvisor | None = None,
) -> None:
    """Add the BlockCluster handlers to `registry` (no global registry: tests build their own)."""

    async def reconcile_cluster(
        body: kopf.Body, namespace: str | None, name: str | None, retry: int = 0, **_: Any
    ) -> None:
        assert namespace and name  # BlockCluster is namespaced
        try:
            result = await reconciler.reconcile(namespace, name)
        except kube.ApiError as e:
            delay = retry_delay(settings, retry)
            raise kopf.TemporaryError(
                f"reconcile failed, will retry in {delay:.0f} s: {e.detail}", delay=delay
            ) from e
        if result.outcome is reconciling.Outcome.INVALID:
            kopf.warn(body, reason="InvalidSpec", message=result.message)
            raise kopf.PermanentError(result.message)

    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(specs.GROUP, specs.VERSION, specs.PLURAL, id="reconcile", registry=registry)(
            reconcile_cluster
        )

    async def resync(
        body: kopf.Body, spec: kopf.Spec, namespace: str | None, name: str | None, **_: Any
    ) -> None:
        assert namespace and name
        result = await reconciler.reconcile(namespace, name)
        if (
            advisor is not None
            and result.outcome is reconciling.Outcome.APPLIED
            and result.status is not None
            and spec.get("autoscaling", {}).get("enabled")
        ):
            await autoscaling.advise_and_scale(
                advisor,
                reconciler.kube,
                meta.ClusterRef.from_body(body),
                specs.parse_spec(dict(spec)),
                result.status,
            )

    kopf.timer(
        specs.GROUP,
        specs.VERSION,
        specs.PLURAL,
        id="resync",
        interval=settings.resync_interval_s,
        initial_delay=settings.resync_interval_s,
        registry=registry,
    )(resync)

    async def child_event(
        event: kopf.RawEvent, body: kopf.Body, namespace: str | None, **_: Any
    ) -> None:
        if event.get("type") is None:
            return  # the initial listing: the resume handlers cover existing clusters
        owner = _owner_name(body)
        if owner is None or namespace is None:
            return
        try:
            await reconciler.reconcile(namespace, owner)
        except kube.ApiError as e:
            # No retry here: the resync timer or the next event will reconcile again.
            logger.warning("reconcile of %s/%s after a child event failed: %s", namespace, owner, e)

    for api_version, kind in children.CHILD_KINDS:
        kopf.on.event(
            api_version,
            _plural(api_version, kind),
            id=f"child-{kind.lower()}",
            labels={meta.MANAGED_BY_LABEL: meta.MANAGED_BY, meta.CLUSTER_LABEL: kopf.PRESENT},
            registry=registry,
        )(child_event)


def _owner_name(body: kopf.Body) -> str | None:
    """The BlockCluster that controls this child (by owner reference, not just the label)."""
    for ref in body.metadata.get("ownerReferences") or []:
        if ref.get("kind") == specs.KIND and ref.get("apiVersion") == specs.API_VERSION:
            name = ref.get("name")
            return str(name) if name else None
    return None
