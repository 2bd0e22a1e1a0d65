"""A BlockCluster's status from what its Deployments report (pure).

Three conditions, each stamped with the generation they describe:

- Ready: every engine replica of the current spec is ready and the gateway (and the endpoint
  picker, where there is one) has its replicas.
- Progressing: a rollout or scaling is under way (new pods not all ready, old ones not gone).
- Degraded: something needs a person: the spec could not be applied (the apiserver's message,
  naming the child), a Secret the pods mount is missing, or a Deployment is stuck (replica
  failures, progress deadline exceeded).

`lastTransitionTime` changes only when a condition's status changes. `frontDoors` lists the
InferencePool only where requests through it can reach the sidecars: the NetworkPolicy is off
or admits the peers of `spec.networkPolicy.ingressFrom` (a Gateway's proxies); otherwise Ready's
message says why it is left out.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from block.operator.blockcluster import meta, pool_objects, scheduler_objects, specs

POOL_CLOSED = (
    "the InferencePool front door is closed: the NetworkPolicy admits only this cluster's "
    "gateway and picker to the sidecars; list your Gateway's proxies in "
    "spec.networkPolicy.ingressFrom"
)


@dataclasses.dataclass(frozen=True, slots=True)
class DeploymentView:
    """The parts of a Deployment's spec and status that the conditions depend on."""

    desired: int
    replicas: int
    ready: int
    updated: int
    generation: int
    observed_generation: int
    failure: str | None  # why it is stuck, if it is

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> DeploymentView:
        status = body.get("status") or {}
        failure = None
        for c in status.get("conditions") or []:
            if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
                failure = c.get("message") or c.get("reason") or "replica failure"
            if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
                failure = c.get("message") or "progress deadline exceeded"
        return cls(
            desired=int(body.get("spec", {}).get("replicas", 1)),
            replicas=int(status.get("replicas") or 0),
            ready=int(status.get("readyReplicas") or 0),
            updated=int(status.get("updatedReplicas") or 0),
            generation=int(body.get("metadata", {}).get("generation") or 0),
            observed_generation=int(status.get("observedGeneration") or 0),
            failure=failure,
        )

    @property
    def rolled_out(self) -> bool:
        return (
            self.observed_generation >= self.generation
            and self.updated == self.desired
            and self.replicas == self.desired
            and self.ready >= self.desired
        )

    def summary(self, what: str) -> str:
        return f"{what} {self.ready}/{self.desired} ready, {self.updated}/{self.desired} updated"


@dataclasses.dataclass(frozen=True, slots=True)
class Observation:
    """What one reconcile saw: the Deployments (None if absent), whether the cluster serves the
    InferencePool API (then the endpoint picker's Deployment belongs to the cluster too), any
    apply error, and (reason, message) of what keeps applied children from serving."""

    engine: DeploymentView | None
    scheduler: DeploymentView | None
    error_reason: str | None = None
    error_message: str = ""
    inference_pool: bool = False
    epp: DeploymentView | None = None
    blocked: tuple[str, str] | None = None
    # The NetworkPolicy admits no Gateway API proxy to the sidecars (spec.networkPolicy
    # enabled, ingressFrom empty): the InferencePool's requests cannot reach them.
    pool_closed: bool = False

    def deployments(self) -> list[tuple[str, DeploymentView | None]]:
        """The Deployments the cluster should have, by the name conditions call them."""
        found = [("engine", self.engine), ("scheduler", self.scheduler)]
        if self.inference_pool:
            found.append(("endpoint picker", self.epp))
        return found


def _condition(
    type_: specs.ConditionType,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    previous: dict[str, specs.Condition],
    now: str,
) -> specs.Condition:
    status_str: specs.ConditionStatus = "True" if status else "False"
    before = previous.get(type_)
    since = before.last_transition_time if before and before.status == status_str else now
    return specs.Condition(
        type=type_,
        status=status_str,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=since,
    )


def compute(
    cluster: meta.ClusterRef,
    seen: Observation,
    previous: specs.BlockClusterStatus,
    now: datetime.datetime,
) -> specs.BlockClusterStatus:
    """The status to write after a reconcile of `cluster` (at its `generation`)."""
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    before: dict[str, specs.Condition] = {c.type: c for c in previous.conditions}
    engine, sched = seen.engine, seen.scheduler
    deployments = seen.deployments()

    failures = [
        f"{what}: {view.failure}" for what, view in deployments if view is not None and view.failure
    ]
    if seen.error_reason:
        degraded = (True, seen.error_reason, seen.error_message)
    elif seen.blocked:
        degraded = (True, *seen.blocked)
    elif failures:
        degraded = (True, "DeploymentStuck", "; ".join(failures))
    else:
        degraded = (False, "AsExpected", "")

    missing = [w for w, v in deployments if v is None]
    pending = [v.summary(w) for w, v in deployments if v is not None and not v.rolled_out]
    if missing:
        progressing = (True, "Creating", f"waiting for {' and '.join(missing)} Deployment")
    elif pending:
        progressing = (True, "RollingOut", "; ".join(pending))
    else:
        progressing = (False, "RolloutComplete", "all replicas of the current spec are ready")

    if seen.error_reason:
        ready = (False, seen.error_reason, seen.error_message)
    elif seen.blocked:
        ready = (False, *seen.blocked)
    elif engine is not None and engine.desired == 0:
        ready = (False, "ScaledToZero", "spec.replicas is 0: no engine serves requests")
    elif not missing and not pending:
        ready = (True, "AllReplicasReady", f"{engine.ready if engine else 0} engine replicas ready")
    else:
        ready = (False, "ReplicasNotReady", "; ".join(pending) or progressing[2])

    pool_open = seen.inference_pool and not seen.pool_closed
    if seen.inference_pool and seen.pool_closed and not seen.error_reason:
        ready = (ready[0], ready[1], f"{ready[2]}; {POOL_CLOSED}")
    gen = cluster.generation
    conditions = [
        _condition("Ready", *ready, gen, before, stamp),
        _condition("Progressing", *progressing, gen, before, stamp),
        _condition("Degraded", *degraded, gen, before, stamp),
    ]
    applied = seen.error_reason is None
    return specs.BlockClusterStatus(
        # observedGeneration says which spec the children reflect: unchanged when applying failed.
        observed_generation=gen if applied else previous.observed_generation,
        replicas=engine.replicas if engine else 0,
        ready_replicas=engine.ready if engine else 0,
        updated_replicas=engine.updated if engine else 0,
        scheduler_ready_replicas=sched.ready if sched else 0,
        epp_ready_replicas=seen.epp.ready if seen.inference_pool and seen.epp else 0,
        selector=meta.selector_string(cluster, "engine"),
        endpoint=scheduler_objects.endpoint(cluster),
        front_doors=["Gateway", "InferencePool"] if pool_open else ["Gateway"],
        inference_pool=pool_objects.name(cluster) if seen.inference_pool else None,
        conditions=conditions,
        autoscaling=previous.autoscaling,  # the autoscaler's to write, not the reconciler's
    )
