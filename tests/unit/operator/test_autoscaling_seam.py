"""The autoscaler's seam: an advisor's answer is bounded by the spec and written via scale."""

from __future__ import annotations

from typing import Any

from block.operator import autoscaling
from block.operator.blockcluster import meta, specs

CLUSTER = meta.ClusterRef(name="demo", namespace="ns", uid="u")
SPEC = specs.BlockClusterSpec.model_validate(
    {
        "model": "llama-2-7b",
        "engine": {"kind": "twin"},
        "replicas": 2,
        "minReplicas": 1,
        "maxReplicas": 4,
    }
)


class FixedAdvisor:
    def __init__(self, answer: int | None) -> None:
        self.answer = answer

    async def advise(
        self,
        cluster: meta.ClusterRef,
        spec: specs.BlockClusterSpec,
        status: specs.BlockClusterStatus,
    ) -> int | None:
        return self.answer

    def last_decision(self, cluster: meta.ClusterRef) -> specs.AutoscalingStatus | None:
        return None


class RecordingKube:
    """Only `scale` is expected; anything else would be a bug in the seam."""

    def __init__(self) -> None:
        self.scaled: list[tuple[str, str, int]] = []

    async def scale(
        self, api_version: str, kind: str, namespace: str, name: str, replicas: int
    ) -> dict[str, Any]:
        assert (api_version, kind) == (specs.API_VERSION, specs.KIND)
        self.scaled.append((namespace, name, replicas))
        return {}

    async def apply(self, obj: dict[str, Any], *, field_manager: str) -> dict[str, Any]:
        raise AssertionError("the seam must not apply objects")

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        raise AssertionError("the seam must not read objects")

    async def patch_status(self, *args: Any) -> dict[str, Any]:
        raise AssertionError("the seam must not write status")


async def test_advice_within_bounds_is_written_through_scale() -> None:
    kube = RecordingKube()
    now = await autoscaling.advise_and_scale(
        FixedAdvisor(3), kube, CLUSTER, SPEC, specs.BlockClusterStatus()
    )
    assert now == 3
    assert kube.scaled == [("ns", "demo", 3)]


async def test_advice_is_clamped_to_min_and_max() -> None:
    kube = RecordingKube()
    assert (
        await autoscaling.advise_and_scale(
            FixedAdvisor(40), kube, CLUSTER, SPEC, specs.BlockClusterStatus()
        )
        == 4
    )
    assert (
        await autoscaling.advise_and_scale(
            FixedAdvisor(0), kube, CLUSTER, SPEC, specs.BlockClusterStatus()
        )
        == 1
    )
    assert [r for _, _, r in kube.scaled] == [4, 1]


async def test_no_opinion_or_same_count_writes_nothing() -> None:
    kube = RecordingKube()
    for answer in (None, 2):
        now = await autoscaling.advise_and_scale(
            FixedAdvisor(answer), kube, CLUSTER, SPEC, specs.BlockClusterStatus()
        )
        assert now == 2
    assert kube.scaled == []


class DecidingAdvisor(FixedAdvisor):
    def __init__(self, answer: int | None, decided: specs.AutoscalingStatus) -> None:
        super().__init__(answer)
        self.decided = decided

    def last_decision(self, cluster: meta.ClusterRef) -> specs.AutoscalingStatus | None:
        return self.decided


class StatusKube(RecordingKube):
    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[dict[str, Any]] = []

    async def patch_status(self, *args: Any) -> dict[str, Any]:
        api_version, kind, namespace, name, status = args
        assert (api_version, kind, namespace, name) == (specs.API_VERSION, specs.KIND, "ns", "demo")
        self.statuses.append(status)
        return {}


DECIDED = specs.AutoscalingStatus(
    last_decision_time="2026-12-06T03:00:00Z", current_replicas=2, recommended_replicas=3,
    target_replicas=3, forecast_rps=12.5, decision="scale up: SLO at risk",
    predicted=[specs.PredictedAtSize(replicas=2),
               specs.PredictedAtSize(replicas=3, p99_seconds=0.4)],
)  # fmt: skip


async def test_the_last_decision_goes_to_the_status_once() -> None:
    kube = StatusKube()
    now = await autoscaling.advise_and_scale(
        DecidingAdvisor(3, DECIDED), kube, CLUSTER, SPEC, specs.BlockClusterStatus()
    )
    assert now == 3 and kube.scaled == [("ns", "demo", 3)]
    [patch] = kube.statuses
    assert patch == {"autoscaling": {
        "lastDecisionTime": "2026-12-06T03:00:00Z", "currentReplicas": 2,
        "recommendedReplicas": 3, "targetReplicas": 3, "forecastRps": 12.5,
        "decision": "scale up: SLO at risk",
        "predicted": [{"replicas": 2}, {"replicas": 3, "p99Seconds": 0.4}],
        "draining": None,  # cleared explicitly: a merge patch keeps what it does not null
    }}  # fmt: skip
    # The same decision already in the status: nothing to write.
    await autoscaling.advise_and_scale(
        DecidingAdvisor(None, DECIDED), kube, CLUSTER, SPEC,
        specs.BlockClusterStatus(autoscaling=DECIDED),
    )  # fmt: skip
    assert len(kube.statuses) == 1
