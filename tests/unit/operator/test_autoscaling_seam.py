"""The autoscaler's seam: an advisor's answer is bounded by the spec and written via scale."""

from __future__ import annotations

from typing import Any

from block.operator import autoscaling
from block.operator.blockcluster import meta, specs

CLUSTER = meta.ClusterRef(name="demo", namespace="ns", uid="u")
SPEC = specs.BlockClusterSpec.model_validate(
    {"model": "m", "engine": {"kind": "twin"}, "replicas": 2, "minReplicas": 1, "maxReplicas": 4}
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
