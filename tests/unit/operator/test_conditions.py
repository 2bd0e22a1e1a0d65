"""Status conditions from what the Deployments report."""

from __future__ import annotations

import datetime
from typing import Any

from block.operator.blockcluster import conditions, meta, specs

CLUSTER = meta.ClusterRef(name="demo", namespace="ns", uid="u", generation=4)
T0 = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def _deployment(desired: int, ready: int, updated: int | None = None, **status: Any) -> Any:
    updated = ready if updated is None else updated
    return conditions.DeploymentView.from_body(
        {
            "metadata": {"generation": 2},
            "spec": {"replicas": desired},
            "status": {
                "observedGeneration": 2,
                "replicas": max(desired, updated),
                "readyReplicas": ready,
                "updatedReplicas": updated,
                **status,
            },
        }
    )


def _by_type(status: specs.BlockClusterStatus) -> dict[str, specs.Condition]:
    return {c.type: c for c in status.conditions}


def test_all_ready_is_ready_and_not_progressing() -> None:
    seen = conditions.Observation(_deployment(2, 2), _deployment(1, 1))
    status = conditions.compute(CLUSTER, seen, specs.BlockClusterStatus(), T0)
    c = _by_type(status)
    assert (c["Ready"].status, c["Ready"].reason) == ("True", "AllReplicasReady")
    assert c["Progressing"].status == "False"
    assert c["Degraded"].status == "False"
    assert status.observed_generation == 4
    assert all(x.observed_generation == 4 for x in status.conditions)
    assert (status.replicas, status.ready_replicas) == (2, 2)
    assert status.selector == "app.kubernetes.io/component=engine,block.dev/cluster=demo"
    assert status.endpoint == "http://demo-scheduler.ns.svc:80"


def test_rollout_in_progress_is_progressing_and_not_ready() -> None:
    seen = conditions.Observation(_deployment(2, 1, updated=1), _deployment(1, 1))
    c = _by_type(conditions.compute(CLUSTER, seen, specs.BlockClusterStatus(), T0))
    assert (c["Ready"].status, c["Progressing"].status) == ("False", "True")
    assert c["Progressing"].reason == "RollingOut"
    assert "engine 1/2 ready" in c["Progressing"].message


def test_missing_deployments_are_being_created() -> None:
    seen = conditions.Observation(None, None)
    c = _by_type(conditions.compute(CLUSTER, seen, specs.BlockClusterStatus(), T0))
    assert c["Progressing"].reason == "Creating"
    assert c["Ready"].status == "False"


def test_stuck_rollout_is_degraded() -> None:
    stuck = _deployment(
        2,
        1,
        conditions=[
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "demo-engine-x" has timed out progressing.',
            }
        ],
    )
    seen = conditions.Observation(stuck, _deployment(1, 1))
    c = _by_type(conditions.compute(CLUSTER, seen, specs.BlockClusterStatus(), T0))
    assert (c["Degraded"].status, c["Degraded"].reason) == ("True", "DeploymentStuck")
    assert "timed out" in c["Degraded"].message


def test_apply_error_keeps_the_old_observed_generation() -> None:
    previous = specs.BlockClusterStatus(observed_generation=3)
    seen = conditions.Observation(_deployment(2, 2), _deployment(1, 1), "ApplyRejected", "bad")
    status = conditions.compute(CLUSTER, seen, previous, T0)
    c = _by_type(status)
    assert status.observed_generation == 3
    assert (c["Ready"].status, c["Degraded"].status) == ("False", "True")
    assert c["Degraded"].message == "bad"


def test_scaled_to_zero_is_not_ready() -> None:
    seen = conditions.Observation(_deployment(0, 0), _deployment(1, 1))
    c = _by_type(conditions.compute(CLUSTER, seen, specs.BlockClusterStatus(), T0))
    assert (c["Ready"].status, c["Ready"].reason) == ("False", "ScaledToZero")


def test_transition_time_moves_only_when_the_status_changes() -> None:
    ready = conditions.Observation(_deployment(2, 2), _deployment(1, 1))
    first = conditions.compute(CLUSTER, ready, specs.BlockClusterStatus(), T0)
    again = conditions.compute(CLUSTER, ready, first, T1)
    assert again == first  # nothing changed: nothing to write
    not_ready = conditions.Observation(_deployment(2, 1), _deployment(1, 1))
    later = _by_type(conditions.compute(CLUSTER, not_ready, first, T1))
    assert later["Ready"].last_transition_time == "2026-01-01T12:05:00Z"
    assert later["Degraded"].last_transition_time == "2026-01-01T12:00:00Z"


def test_without_the_pool_api_the_gateway_is_the_only_front_door() -> None:
    seen = conditions.Observation(_deployment(2, 2), _deployment(1, 1))
    status = conditions.compute(CLUSTER, seen, specs.BlockClusterStatus(), T0)
    assert status.front_doors == ["Gateway"]
    assert status.inference_pool is None and status.epp_ready_replicas == 0


def test_with_the_pool_api_the_endpoint_picker_counts_for_readiness() -> None:
    waiting = conditions.Observation(
        _deployment(2, 2), _deployment(1, 1), inference_pool=True, epp=None
    )
    status = conditions.compute(CLUSTER, waiting, specs.BlockClusterStatus(), T0)
    c = _by_type(status)
    assert (c["Ready"].status, c["Progressing"].reason) == ("False", "Creating")
    assert "endpoint picker" in c["Progressing"].message
    assert status.front_doors == ["Gateway", "InferencePool"]
    assert status.inference_pool == "demo-pool"

    ready = conditions.Observation(
        _deployment(2, 2), _deployment(1, 1), inference_pool=True, epp=_deployment(1, 1)
    )
    status = conditions.compute(CLUSTER, ready, status, T1)
    assert _by_type(status)["Ready"].status == "True"
    assert status.epp_ready_replicas == 1
