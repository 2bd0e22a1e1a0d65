"""The `BlockCluster` spec and status as pydantic models (the CRD's schema, seen from Python).

The apiserver validates and defaults objects with the OpenAPI schema and CEL rules in
`crd_objects`; these models read what it stored. They repeat the same defaults and bounds so
that rendering from a spec typed here, a test or `block operator render` gives what the
cluster would run; `tests/unit/operator` checks that the two schemas agree field by field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic.alias_generators import to_camel

from block.operator.blockcluster import catalogue, flags, quantities

GROUP = "block.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "BlockCluster"
PLURAL = "blockclusters"
SINGULAR = "blockcluster"
SHORT_NAMES = ("bc",)

# Routing policies the gateway and the picker accept (`block.scheduler.routing.resolve_policy`
# over `block.simulator.policies.make_policy`); the CRD rejects other names. `power-of-k` and
# `block-k` take k from `--k` in scheduler.args (2); the pattern below names it instead. The
# offline experiments' baselines (llm-d-*, dynamo-kv, aibrix-prefix, sglang-cache-aware) are not
# here: the gateway refuses them (it keeps no router-side prefix index).
POLICIES: tuple[str, ...] = (
    "block",
    "block-ttft",
    "block-k",
    "power-of-k",
    "prefix-affinity",
    "llumnix",
    "least-requests",
    "least-kv",
    "round-robin",
    "random",
)
# power-of-K (least loaded of K sampled) and block-kK (Block over K sampled), K from 1 to 999.
POLICY_PATTERN = r"^(power-of-|block-k)[1-9][0-9]{0,2}$"
POLICY_HELP = "power-of-K, block-kK"
ENGINE_KINDS: tuple[str, ...] = ("vllm", "twin")
TENSOR_PARALLEL_SIZES: tuple[int, ...] = (1, 2, 4, 8)
MAX_ARGS = 64
MAX_ARG_LENGTH = 1024

# A Kubernetes resource quantity: 2, "500m", "16Gi" (not negative).
MAX_QUANTITY_LENGTH = 64
Quantity = Annotated[
    StrictInt | Annotated[StrictStr, Field(max_length=MAX_QUANTITY_LENGTH)],
    AfterValidator(quantities.check),
]
MAX_RESOURCES = 32  # resource names per requests or limits
# Names of Kubernetes objects: a DNS subdomain (Secrets), and a Secret's data key.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"


class CrdModel(BaseModel):
    """Base of CRD models: camelCase on the wire, snake_case in Python, read-only."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid"
    )


class Resources(CrdModel):
    """A container's resource requests and limits, as in a Pod spec."""

    requests: Annotated[dict[str, Quantity], Field(max_length=MAX_RESOURCES)] = Field(
        default_factory=dict
    )
    limits: Annotated[dict[str, Quantity], Field(max_length=MAX_RESOURCES)] = Field(
        default_factory=dict
    )


class EnvVar(CrdModel):
    name: Annotated[str, Field(min_length=1)]
    value: str = ""


Args = Annotated[list[Annotated[str, Field(max_length=MAX_ARG_LENGTH)]], Field(max_length=MAX_ARGS)]


class SchedulingSpec(CrdModel):
    """The engine's scheduler settings, named as vLLM's flags. One source of truth: the operator
    passes the same values to the engine and to the predictor sidecar (whose twin simulates
    that scheduler) and uses them in the autoscaler's what-ifs. Unset: the engine's defaults."""

    max_num_seqs: Annotated[int, Field(ge=1, le=4096)] | None = None
    max_num_batched_tokens: Annotated[int, Field(ge=1, le=1 << 20)] | None = None
    block_size: Literal[8, 16, 32, 64, 128] | None = None
    enable_prefix_caching: bool | None = None

    def argv(self) -> list[str]:
        """vLLM's flags for these settings (`block engine` and `block predictor` take the same
        names)."""
        out: list[str] = []
        if self.max_num_seqs is not None:
            out += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.max_num_batched_tokens is not None:
            out += ["--max-num-batched-tokens", str(self.max_num_batched_tokens)]
        if self.block_size is not None:
            out += ["--block-size", str(self.block_size)]
        if self.enable_prefix_caching is False:
            out.append("--no-enable-prefix-caching")
        elif self.enable_prefix_caching:
            out.append("--enable-prefix-caching")
        return out


class EngineSpec(CrdModel):
    """The inference engine of each replica: stock vLLM, or Block's engine twin (no GPU)."""

    kind: Literal["vllm", "twin"] = "vllm"
    # Required for vLLM (the CRD says so); the twin runs in Block's own image when unset.
    image: str | None = None
    gpu: Annotated[str, Field(min_length=1)] = "h100"
    tensor_parallel: Literal[1, 2, 4, 8] = 1
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    args: Args = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(default_factory=dict)
    # Untouched Kubernetes tolerations, passed to the Pod spec as they are.
    tolerations: list[dict[str, Any]] = Field(default_factory=list)


class PredictorSpec(CrdModel):
    """The predictor sidecar beside each engine (Block's image unless overridden)."""

    image: str | None = None
    args: Args = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)


class ApiKeysSpec(CrdModel):
    """A Secret of the cluster's namespace holding the inference API keys, one per line, that
    clients must present (Bearer or x-api-key). Mounted into the gateway and the picker."""

    secret_name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=SECRET_KEY)] = "keys"


class SchedulerSpec(CrdModel):
    """How requests are routed across the replicas: the standalone gateway and, where the
    cluster has the InferencePool API, the endpoint picker, both with these settings."""

    policy: str = "block"
    replicas: Annotated[int, Field(ge=1, le=100)] = 1
    image: str | None = None
    args: Args = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    api_keys: ApiKeysSpec | None = None


class NetworkPolicySpec(CrdModel):
    """NetworkPolicies over the cluster's pods: the sidecars (the engines' only open port)
    take connections from this cluster's gateway and picker pods and from `ingressFrom`; the
    gateway's and the picker's ports from anywhere. Disabled, the policies admit everything
    (the operator deletes nothing, so it opens them rather than removing them)."""

    enabled: bool = True
    # Untouched NetworkPolicyPeers (podSelector / namespaceSelector / ipBlock) also let in: a
    # Gateway API implementation's proxies for the InferencePool front door, Prometheus.
    ingress_from: list[dict[str, Any]] = Field(default_factory=list, max_length=32)


class SloSpec(CrdModel):
    """Latency objectives, in seconds: SLO-aware routing and the autoscaler aim at them."""

    ttft_seconds: Annotated[float, Field(gt=0)] | None = None
    # to_camel would spell it e2ESeconds.
    e2e_seconds: Annotated[float, Field(gt=0)] | None = Field(default=None, alias="e2eSeconds")


class AutoscalingSpec(CrdModel):
    """Auto-provisioning of engine replicas between minReplicas and maxReplicas."""

    enabled: bool = False
    window_seconds: Annotated[int, Field(ge=10, le=86400)] = 300
    cooldown_seconds: Annotated[int, Field(ge=0, le=86400)] = 600


class BlockClusterSpec(CrdModel):
    """What a user asks for: a model served by N engine replicas behind one gateway."""

    model: Annotated[str, Field(min_length=1)]
    engine: EngineSpec
    predictor: PredictorSpec = Field(default_factory=PredictorSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    # Engine replicas now; the scale subresource (kubectl scale, the autoscaler) writes here.
    replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    min_replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = 8
    slo: SloSpec = Field(default_factory=SloSpec)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)

    @property
    def own_images(self) -> bool:
        """Every container of Block's runs an image named in the spec, which may carry
        profiles of its own: the catalogue check is off."""
        return self.predictor.image is not None and (
            self.engine.kind != "twin" or self.engine.image is not None
        )

    @model_validator(mode="after")
    def _check_cross_field_rules(self) -> BlockClusterSpec:
        # The same rules as the CRD's CEL, for specs that never went through an apiserver.
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError("replicas must lie between minReplicas and maxReplicas")
        if self.engine.kind == "vllm" and not self.engine.image:
            raise ValueError("engine.image is required when engine.kind is vllm")
        policy = self.scheduler.policy
        if policy not in POLICIES and not re.match(POLICY_PATTERN, policy):
            raise ValueError(
                f"scheduler.policy must be one of: {', '.join(POLICIES)}, {POLICY_HELP}"
            )
        for where, args, reserved in (
            ("engine.args", self.engine.args, flags.ENGINE),
            ("predictor.args", self.predictor.args, flags.PREDICTOR),
            ("scheduler.args", self.scheduler.args, flags.SCHEDULER),
        ):
            if bad := flags.refused(args, reserved):
                raise ValueError(f"{where} must not set flags the operator sets: {', '.join(bad)}")
        if not self.own_images:
            problem = catalogue.problem(self.engine.gpu, self.model, self.engine.tensor_parallel)
            if problem is not None:
                raise ValueError(problem)
        return self


ConditionType = Literal["Ready", "Progressing", "Degraded"]
# Ways into a cluster: the standalone gateway (`block gateway`, always), and an InferencePool
# whose endpoint picker is `block epp`, for a Gateway API implementation (where the cluster has
# the InferencePool API).
FrontDoor = Literal["Gateway", "InferencePool"]
ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(CrdModel):
    """One status condition, shaped like metav1.Condition."""

    type: ConditionType
    status: ConditionStatus
    reason: str
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str | None = None


class PredictedAtSize(CrdModel):
    replicas: int
    # Predicted p99 TTFT (or e2e when only that SLO is set) with this many replicas; absent when
    # requests would still be waiting at the end of the simulated window.
    p99_seconds: float | None = None


class AutoscalingStatus(CrdModel):
    """The autoscaler's last decision, as `kubectl get -o yaml` shows it."""

    last_decision_time: str
    current_replicas: int
    recommended_replicas: int
    target_replicas: int
    forecast_rps: float
    decision: str  # what it did and why, in words
    predicted: list[PredictedAtSize] = Field(default_factory=list)
    draining: str | None = None  # the pod being drained before removal


class BlockClusterStatus(CrdModel):
    observed_generation: int | None = None
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    scheduler_ready_replicas: int = 0
    epp_ready_replicas: int = 0
    selector: str = ""
    endpoint: str = ""
    front_doors: list[FrontDoor] = Field(default_factory=list)
    inference_pool: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    autoscaling: AutoscalingStatus | None = None


def parse_spec(raw: object) -> BlockClusterSpec:
    """A spec from an object's `.spec` (a dict as the apiserver stored it)."""
    return BlockClusterSpec.model_validate(raw)
