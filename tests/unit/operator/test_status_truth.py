"""Issue 20, item 10 (and item 3's memory limits): what cannot run is refused before it is
applied, what the apiserver refuses is in the status with its message, retries back off."""

from __future__ import annotations

import datetime
from typing import Any

import pydantic
import pytest

from block.operator import kube
from block.operator.blockcluster import (
    catalogue,
    children,
    handlers,
    meta,
    quantities,
    reconciling,
    specs,
)
from block.operator.settings import OperatorSettings
from block.simulator.latency import LatencyModel

CLUSTER = meta.ClusterRef(name="demo", namespace="ns", uid="u-1")


def _spec(**patch: Any) -> specs.BlockClusterSpec:
    body = {"model": "meta-llama/Llama-2-7b-hf", "engine": {"kind": "twin", "gpu": "a100"}}
    return specs.BlockClusterSpec.model_validate({**body, **patch})


@pytest.mark.parametrize(
    ("gpu", "model", "tp", "message"),
    [
        ("b200", "llama-2-7b", 1, "engine.gpu must be one of: a100, h100"),
        ("a100", "meta-llama/Llama-3.1-8B-Instruct", 1, "model must be one of"),
        ("h100", "meta-llama/Meta-Llama-3-70B", 8, "no latency profile"),
        ("a100", "microsoft/phi-2", 2, "no latency profile"),
    ],
)
def test_what_the_image_cannot_serve_is_refused(
    gpu: str, model: str, tp: int, message: str
) -> None:
    engine = {"kind": "twin", "gpu": gpu, "tensorParallel": tp}
    with pytest.raises(pydantic.ValidationError, match=message):
        _spec(model=model, engine=engine)
    # An image of your own (predictor, and engine for the twin) may bring more profiles.
    own = {**engine, "image": "mine/twin:1"}
    assert _spec(model=model, engine=own, predictor={"image": "mine/block:1"}).model == model


@pytest.mark.parametrize(("gpu", "model"), [("A100", "LLAMA-2-7B"), ("h100", "qwen2-7b-hf")])
def test_catalogue_spellings_are_the_ones_the_processes_accept(gpu: str, model: str) -> None:
    assert _spec(model=model, engine={"kind": "twin", "gpu": gpu}).model == model


def test_the_catalogue_is_what_the_latency_model_loads() -> None:
    """Every (gpu, model, tp) the CRD admits loads, as the predictor and the twin load it."""
    for gpu, model, tp in sorted(catalogue.profiles())[::7]:  # a spread, to keep it quick
        LatencyModel.load(gpu, model, tp)
    assert ("a100", "Qwen/Qwen2-7B", 1) not in catalogue.profiles()
    exact, short = catalogue.cel_maps()
    assert exact["a100/meta-llama/Llama-2-7b-hf"] == [1, 2, 4, 8]
    assert short["a100/llama-2-7b-hf"] == short["a100/llama-2-7b"] == [1, 2, 4, 8]
    assert exact["h100/meta-llama/Meta-Llama-3-8B"] == [1]


@pytest.mark.parametrize("value", ["lots", "-1", "1.5.3", "10 Gi", True])
def test_resource_quantities_are_checked(value: Any) -> None:
    with pytest.raises(pydantic.ValidationError):
        _spec(engine={"kind": "twin", "gpu": "a100", "resources": {"limits": {"cpu": value}}})


def test_quantities_compare_as_kubernetes_does() -> None:
    assert quantities.parse("1Gi") == 1024**3 and quantities.parse("500m") * 2 == 1
    assert quantities.parse("2e3") == quantities.parse("2k") == 2000
    assert quantities.parse(3) == 3


def _containers(spec: specs.BlockClusterSpec) -> dict[str, dict[str, Any]]:
    out = {}
    settings = meta.RenderSettings(block_image="b:t")
    for obj in children.render(CLUSTER, spec, settings, inference_pool=True):
        if obj["kind"] == "Deployment":
            out.update({c["name"]: c for c in obj["spec"]["template"]["spec"]["containers"]})
    return out


def test_block_containers_have_a_memory_limit_by_default() -> None:
    found = _containers(_spec())
    for name in ("engine", "predictor", "scheduler", "epp"):
        assert found[name]["resources"]["limits"]["memory"] == meta.BLOCK_MEMORY_LIMIT, name
    vllm = _containers(_spec(engine={"kind": "vllm", "image": "v:1", "gpu": "a100"}))
    assert "memory" not in vllm["engine"]["resources"]["limits"]  # the model decides: yours


def test_memory_limits_are_overridable_and_never_below_the_request() -> None:
    found = _containers(
        _spec(
            predictor={"resources": {"limits": {"memory": "3Gi"}}},
            scheduler={"resources": {"requests": {"memory": "2Gi"}}},
        )
    )
    assert found["predictor"]["resources"]["limits"]["memory"] == "3Gi"
    assert found["scheduler"]["resources"]["limits"]["memory"] == "2Gi"
    assert found["scheduler"]["resources"]["requests"]["memory"] == "2Gi"
    assert found["epp"]["resources"]["limits"]["memory"] == "2Gi"  # same spec.scheduler


class RefusingKube:
    """An apiserver that refuses one kind of child with the given status."""

    def __init__(self, kind: str, code: int, message: str) -> None:
        self.kind, self.code, self.message = kind, code, message
        self.status: dict[str, Any] = {}
        body = {
            "apiVersion": specs.API_VERSION,
            "kind": specs.KIND,
            "metadata": {"name": "demo", "namespace": "ns", "uid": "u-1", "generation": 2},
            "spec": {"model": "llama-2-7b", "engine": {"kind": "twin", "gpu": "a100"}},
        }
        self.objects: dict[tuple[str, str], Any] = {(specs.KIND, "demo"): body}

    async def apply(self, obj: dict[str, Any], *, field_manager: str) -> dict[str, Any]:
        if obj["kind"] == self.kind:
            raise kube.ApiError(self.code, self.message)
        return obj

    async def create(self, obj: dict[str, Any], *, field_manager: str) -> dict[str, Any]:
        self.objects[(obj["kind"], obj["metadata"]["name"])] = obj
        return obj

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        return self.objects.get((kind, name))

    async def patch_status(self, *args: Any) -> dict[str, Any]:
        self.status = args[-1]
        return {}

    async def scale(self, *args: Any) -> dict[str, Any]:
        raise AssertionError

    async def serves(self, api_version: str, plural: str) -> bool:
        return False


def _reconciler(api: RefusingKube) -> reconciling.Reconciler:
    return reconciling.Reconciler(
        kube=api,
        render_settings=meta.RenderSettings(block_image="b:t"),
        clock=lambda: datetime.datetime(2026, 12, 6, tzinfo=datetime.UTC),
    )


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


async def test_a_refused_child_is_in_the_status_with_the_apiservers_message() -> None:
    message = 'Deployment.apps "demo-engine" is invalid: spec.template.spec.containers[0]'
    api = RefusingKube("Deployment", 422, message)
    result = await _reconciler(api).reconcile("ns", "demo")
    assert result.outcome is reconciling.Outcome.INVALID
    ready, degraded = _conditions(api.status)["Ready"], _conditions(api.status)["Degraded"]
    assert (ready["status"], ready["reason"]) == ("False", "ApplyRejected")
    assert degraded["status"] == "True"
    assert degraded["message"] == f"applying Deployment demo-engine: {message}"
    assert "observedGeneration" not in api.status  # the children do not reflect generation 2


async def test_a_failure_worth_retrying_is_in_the_status_and_raised_for_backoff() -> None:
    api = RefusingKube("Service", 500, "failed to create typed patch object")
    with pytest.raises(kube.ApiError, match="applying Service demo-engine"):
        await _reconciler(api).reconcile("ns", "demo")
    degraded = _conditions(api.status)["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "ApplyFailed")
    assert "failed to create typed patch object" in degraded["message"]


async def test_a_missing_api_keys_secret_keeps_the_cluster_from_ready() -> None:
    api = RefusingKube("nothing", 0, "")
    body = api.objects[(specs.KIND, "demo")]
    body["spec"]["scheduler"] = {"apiKeys": {"secretName": "keys"}}
    result = await _reconciler(api).reconcile("ns", "demo")
    assert result.outcome is reconciling.Outcome.APPLIED
    ready = _conditions(api.status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "SecretMissing")
    assert "Secret keys (scheduler.apiKeys) does not exist" in ready["message"]
    assert api.status["observedGeneration"] == 2  # applied: only the Secret is missing
    api.objects[("Secret", "keys")] = {"data": {"keys": "YQ=="}}
    await _reconciler(api).reconcile("ns", "demo")
    assert _conditions(api.status)["Ready"]["reason"] != "SecretMissing"


def test_retries_back_off_to_a_bound() -> None:
    settings = OperatorSettings(retry_delay_s=5, retry_max_delay_s=300)
    delays = [handlers.retry_delay(settings, n) for n in range(10)]
    assert delays[:4] == [5, 10, 20, 40] and delays[-1] == 300
    assert handlers.retry_delay(settings, 10_000) == 300
