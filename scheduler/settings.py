"""Gateway settings: environment variables `BLOCK_SCHEDULER_*`, overridden by CLI flags.

Built once in `block gateway` / `block epp` (or by a test) and passed to `create_app`;
nothing reads the environment later. Each field says its unit, its default and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from block.errors import ConfigError

Seconds = Annotated[float, Field(gt=0)]


class SchedulerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BLOCK_SCHEDULER_", frozen=True, extra="ignore", populate_by_name=True
    )

    # Address and port the gateway listens on (`block gateway`: Envoy's listener). `block epp`
    # binds its gRPC and admin ports on `host`; `block gateway` binds them on loopback.
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    # The endpoint picker's ports: Envoy's external-processing gRPC API (9002 is what the
    # Gateway API Inference Extension's examples use), and the HTTP admin port (metrics,
    # /v1/replicas, the autoscaling API, /healthz). 0: any free port.
    grpc_port: Annotated[int, Field(ge=0, le=65535)] = 9002
    admin_port: Annotated[int, Field(ge=0, le=65535)] = 9090
    # What serves the picker's gRPC: the compiled front (`block_epp_front`, epp_front/: ~4x
    # the decisions per core of grpc.aio and ~0.5 ms less added latency, bench/envoy_epp.py),
    # or grpc.aio; "auto": the compiled one when it is installed.
    picker_front: Literal["auto", "native", "grpcio"] = "auto"
    # `block gateway` only: Envoy's own admin interface (stats, config dump), on loopback; its
    # worker threads (0: one per core); how long Envoy waits for the picker's answer to one
    # message before it routes without it (round-robin over the replicas, counted in Envoy's
    # ext_proc failure_mode_allowed stat).
    envoy_admin_port: Annotated[int, Field(ge=0, le=65535)] = 9901
    envoy_concurrency: Annotated[int, Field(ge=0, le=256)] = 0
    picker_timeout_s: Seconds = 1.0

    # Routing policy (block.simulator.policies names; `power-of-k` and `block-k` take `k`).
    policy: str = "block"
    k: Annotated[int, Field(ge=1, le=64)] = 2
    # Policy used when a prediction policy got no answer in time: a load-based one, fed by the
    # last load figures seen plus this gateway's own in-flight requests.
    fallback_policy: str = "least-requests"
    # Seed of the policies' random choices (random, power-of-k sampling); unset: from the OS.
    seed: int | None = None

    # Where replicas come from. A replica URL is its predictor sidecar, which both proxies the
    # OpenAI API and answers /v1/predict.
    discover: Literal["static", "k8s"] = "static"
    replicas: list[str] = Field(default_factory=list)
    # Kubernetes discovery: EndpointSlices of this Service (label kubernetes.io/service-name).
    namespace: str | None = None
    service: str | None = None
    # The EndpointSlice port to use, by name ("http" is what the operator names it); unset:
    # the slice's first port.
    port_name: str | None = "http"
    scheme: Literal["http", "https"] = "http"
    # `block gateway` with k8s discovery: NAME:PORT of a headless Service resolving to every
    # replica's sidecar, Envoy's host set (the picker's choices are taken from it).
    replicas_dns: str | None = None

    # Predictor fan-out: how long a request waits for predictions before deciding with whoever
    # answered. A few ms: a loopback/in-cluster predict round trip takes well under 2 ms.
    predict_deadline_s: Seconds = 0.005
    # A late answer is still awaited in the background up to this long (it refreshes the
    # replica's load figures for fallbacks), then abandoned.
    predict_timeout_s: Seconds = 0.5
    # After this many predictor failures or timeouts in a row, stop asking that predictor for
    # `predictor_cooldown_s` (its replica still gets traffic through the fallback figures).
    predictor_failures_to_skip: Annotated[int, Field(ge=1)] = 3
    predictor_cooldown_s: Seconds = 1.0
    # A request dispatched less than this long before a predictor answered may not be in that
    # predictor's figures yet, so it is counted on top of them (no herding in bursts).
    visibility_s: Annotated[float, Field(ge=0)] = 0.02
    # Policies that read load figures but not predictions (least-requests, llumnix, ...): take
    # the figures from a fan-out per request ("request", fresh) or only from what earlier
    # answers and health probes left ("cached", no fan-out cost).
    load_figures: Literal["request", "cached"] = "request"

    # Response-length estimate sent to predictors and the chosen sidecar: the estimator
    # (block.estimator) when installed, else `prior_output_tokens`; `max_tokens` caps both.
    length_source: Literal["estimator", "prior"] = "estimator"
    prior_output_tokens: Annotated[int, Field(ge=1)] = 256
    # Estimator threads (it is CPU-bound, about 1 ms per prompt; kept off the event loop).
    estimator_workers: Annotated[int, Field(ge=1, le=16)] = 1
    # Estimates waiting for a thread beyond this many: the request uses the prior instead, so
    # an overloaded estimator adds no queueing delay (counted in block_scheduler_length_*).
    estimator_max_queue: Annotated[int, Field(ge=0)] = 16
    # Prompt tokens are estimated from characters (tokenizing every prompt costs ~0.3 µs per
    # character on the event loop); Llama-3 English text averages 4-5 characters per token.
    chars_per_token: Annotated[float, Field(gt=0)] = 4.0
    # Prefix-cache awareness: tokenize each prompt (Llama-3 tokenizer and chat template, as
    # the sidecars do; in a thread beyond a few hundred characters) into its block hash chain
    # and send it with the predictions, so `block` predicts cache hits and `prefix-affinity`
    # sees them. Used by policies that read them; off: no tokenizer is loaded.
    prefix_hashes: bool = True
    # Tokens per hashed block: the engines' KV block size (vLLM's default is 16).
    prefix_block_size: Annotated[int, Field(ge=1, le=1024)] = 16

    # Cluster-wide SLOs (requests may override them with headers x-block-slo-ttft-ms and
    # x-block-slo-e2e-ms); unset: none. Also read from the operator's cluster.json.
    slo_ttft_s: Seconds | None = None
    slo_e2e_s: Seconds | None = None
    cluster_config: Path | None = Field(
        default=None, validation_alias="BLOCK_CLUSTER_CONFIG"
    )  # the operator mounts it and names it in this variable
    # Answer 429 when every replica asked is predicted to miss the request's SLO by more than
    # this factor (1.0: any miss); off: such requests go to the least bad replica.
    reject_unmeetable: bool = True
    slo_slack: Annotated[float, Field(ge=1.0)] = 1.0
    # Answer 429 when every replica has at least this many requests waiting (0: never); read
    # from load figures, so it applies to the policies that fetch them.
    max_waiting_per_replica: Annotated[int, Field(ge=0)] = 0

    # A request that failed before its first byte reached the client is retried on another
    # replica, up to this many attempts in all.
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    connect_timeout_s: Seconds = 2.0
    # Longest wait for the next byte from an engine (a long non-streamed generation).
    read_timeout_s: Seconds = 600.0
    # Time-to-first-byte limit per attempt (a replica that takes requests but never answers):
    # past it Envoy gives up on that replica and tries the next of the picker's list. A stream
    # answers at its first token: this limit, or 4x its predicted TTFT if longer. A whole
    # answer comes at its end: the limit plus `first_byte_per_token_s` per estimated output
    # token, or 4x its predicted e2e if longer.
    first_byte_timeout_s: Seconds = 60.0
    first_byte_per_token_s: Annotated[float, Field(ge=0)] = 0.25
    # Slow clients: all request headers within this long, the whole request (body included)
    # within `request_timeout_s`, or Envoy answers 408 and closes (counted in its stats
    # downstream_rq_header_timeout / downstream_rq_timeout, logged in its access log).
    header_timeout_s: Seconds = 10.0
    request_timeout_s: Seconds = 60.0
    # A replica whose proxying failed is avoided for backoff * 2^(failures-1), at most max.
    failure_backoff_s: Seconds = 1.0
    failure_backoff_max_s: Seconds = 30.0
    # Active health probe of each replica's /readyz (0: off, rely on discovery readiness).
    health_interval_s: Annotated[float, Field(ge=0)] = 2.0
    # Autoscaler API (/v1/autoscaling/*): arrivals are reported over this rolling window (the
    # operator's control interval, 60 s by default), and a drain the operator never ends or
    # undoes lapses after `drain_max_s` (above the operator's own 300 s drain bound).
    autoscaling_window_s: Annotated[float, Field(ge=1, le=3600)] = 60.0
    drain_max_s: Seconds = 900.0

    # Largest request body accepted, bytes (413 beyond): a 128k-token prompt fits.
    max_body_bytes: Annotated[int, Field(gt=0)] = 8 * 1024 * 1024
    # File with one API key per line (# comments); unset: no authentication. Re-read when it
    # changes (a Kubernetes Secret mount updates in place).
    api_keys_file: Path | None = None
    # File holding the admin token (the operator's Secret): `/v1/autoscaling/*` (and
    # `/v1/replicas` when API keys are set) need `Authorization: Bearer <token>`; unset, they
    # answer 403. Inference API keys never open them.
    admin_token_file: Path | None = None

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _check(self) -> SchedulerSettings:
        if self.discover == "static" and not self.replicas:
            raise ValueError("static discovery needs at least one replica URL (--replicas)")
        if self.discover == "k8s" and not self.service:
            raise ValueError("k8s discovery needs the engine Service name (--service)")
        for url in self.replicas:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"replica URL {url!r} must start with http:// or https://")
        return self


@dataclass(frozen=True)
class ClusterDefaults:
    """What the gateway takes from the operator's cluster.json (only these keys)."""

    slo_ttft_s: float | None = None
    slo_e2e_s: float | None = None


def cluster_defaults(path: Path | None) -> ClusterDefaults:
    """SLOs from the operator's ConfigMap file; a missing path means none."""
    if path is None:
        return ClusterDefaults()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read cluster config {path}: {e}") from e
    slo = data.get("slo") if isinstance(data, dict) else None
    if not isinstance(slo, dict):
        return ClusterDefaults()
    ttft, e2e = slo.get("ttftSeconds"), slo.get("e2eSeconds")
    if not all(v is None or (isinstance(v, int | float) and v > 0) for v in (ttft, e2e)):
        raise ConfigError(f"cluster config {path}: slo values must be positive numbers")
    return ClusterDefaults(slo_ttft_s=ttft, slo_e2e_s=e2e)
