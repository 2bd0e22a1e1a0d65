"""The seam for auto-provisioning (issue 6 fills it): who decides a BlockCluster's replicas.

The operator's resync timer calls `advise_and_scale` for every BlockCluster with
`spec.autoscaling.enabled`. A `ReplicaAdvisor` looks at the cluster (its spec, status and,
through the gateway's and predictors' HTTP APIs, its load) and answers how many engine replicas
it should have; the operator clamps the answer to the spec's bounds and writes it through the
scale subresource, so `kubectl scale` and the advisor use the same path, and writes the
advisor's last decision (with the predicted p99 at each size) to `status.autoscaling`. Without
an advisor the replicas stay what the user set.
"""

from __future__ import annotations

import logging
from typing import Protocol

from block.operator import kube as kube_
from block.operator.blockcluster import meta, specs

logger = logging.getLogger(__name__)


class ReplicaAdvisor(Protocol):
    async def advise(
        self,
        cluster: meta.ClusterRef,
        spec: specs.BlockClusterSpec,
        status: specs.BlockClusterStatus,
    ) -> int | None:
        """Engine replicas the cluster should have now; None: no opinion (keep them)."""
        ...

    def last_decision(self, cluster: meta.ClusterRef) -> specs.AutoscalingStatus | None:
        """What it last decided for `cluster` and why, for the status; None: nothing yet."""
        ...


def bounded(spec: specs.BlockClusterSpec, replicas: int) -> int:
    return max(spec.min_replicas, min(spec.max_replicas, replicas))


async def advise_and_scale(
    advisor: ReplicaAdvisor,
    kube: kube_.Kube,
    cluster: meta.ClusterRef,
    spec: specs.BlockClusterSpec,
    status: specs.BlockClusterStatus,
) -> int:
    """Ask `advisor`, scale to its (bounded) answer if it differs; return the replicas now."""
    advice = await advisor.advise(cluster, spec, status)
    decided = advisor.last_decision(cluster)
    if decided is not None and decided != status.autoscaling:
        body = decided.model_dump(by_alias=True, exclude_none=True)
        body.setdefault("draining", None)  # a merge patch keeps what it does not null
        await kube.patch_status(
            specs.API_VERSION, specs.KIND, cluster.namespace, cluster.name, {"autoscaling": body}
        )
    if advice is None:
        return spec.replicas
    target = bounded(spec, advice)
    if target != spec.replicas:
        logger.info(
            "scaling %s/%s from %d to %d engine replicas (advised %d)",
            cluster.namespace, cluster.name, spec.replicas, target, advice,
        )  # fmt: skip
        await kube.scale(specs.API_VERSION, specs.KIND, cluster.namespace, cluster.name, target)
    return target
