"""Settings of the engine twin (`BLOCK_ENGINE_*`) and the predictor sidecar
(`BLOCK_PREDICTOR_*`), overridden by CLI flags.

Built once by the command (or by a test) and passed to `create_*_app`; nothing reads the
environment later. Each field says its unit, default and why.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Seconds = Annotated[float, Field(gt=0)]
Port = Annotated[int, Field(ge=0, le=65535)]  # 0: any free port (tests)


class ReplicaSettings(BaseSettings):
    """The engine replica both services model: hardware, model and the scheduler's settings,
    named as vLLM names its flags."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    # Latency profile: GPU and model (block.simulator names or aliases), tensor parallelism.
    gpu: str = "a100"
    model: str = "meta-llama/Llama-2-7b-hf"
    tp: Annotated[int, Field(ge=1, le=64)] = 1
    # vLLM v1 ("vllm") or Sarathi/vLLM v0 ("sarathi") scheduling.
    scheduler: Literal["vllm", "sarathi"] = "vllm"
    # Token budget per step (vLLM --max-num-batched-tokens); vLLM's default for online serving.
    max_num_batched_tokens: Annotated[int, Field(ge=1)] = 2048
    # Most sequences in one batch (vLLM --max-num-seqs).
    max_num_seqs: Annotated[int, Field(ge=1)] = 256
    # KV-cache blocks of the engine (vLLM logs "# GPU blocks"); unset: the sidecar reads the
    # engine's vllm:cache_config_info, the twin sizes them from GPU memory like vLLM.
    num_blocks: Annotated[int, Field(ge=1)] | None = None
    block_size: Annotated[int, Field(ge=1, le=256)] = 16
    # vLLM's automatic prefix caching (on by default since v1; --no-enable-prefix-caching).
    enable_prefix_caching: bool = True
    # Context length; unset: the model's.
    max_model_len: Annotated[int, Field(ge=2)] | None = None
    # Name clients put in "model"; unset: `model`.
    served_model_name: str | None = None

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model


class EngineSettings(ReplicaSettings):
    """`block engine`: an OpenAI-compatible server timed by the simulator in real time."""

    model_config = SettingsConfigDict(env_prefix="BLOCK_ENGINE_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: Port = 8001
    # A real GPU is not the profile: each step's time is the profile's x `bias` x a lognormal
    # factor exp(N(0, noise_sigma)). 0 and 1 give the profile exactly.
    noise_sigma: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    bias: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    # Seed of the step noise and of the response lengths drawn from ShareGPT.
    seed: int = 0
    # Largest request body accepted (bytes): a full 128k-token prompt fits well under it.
    max_body_bytes: Annotated[int, Field(ge=1024)] = 8 * 2**20
    log_level: str = "INFO"


class PredictorSettings(ReplicaSettings):
    """`block predictor`: the sidecar in front of one engine."""

    model_config = SettingsConfigDict(env_prefix="BLOCK_PREDICTOR_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: Port = 8101
    # The engine this sidecar stands in front of.
    engine_url: str = "http://127.0.0.1:8001"
    # Connecting to the engine (loopback in a pod): fail fast so the client gets a clear 503.
    connect_timeout_s: Seconds = 2.0
    # Longest silence between two reads from the engine (a queued request may wait long for
    # its first token under overload; vLLM itself never times out).
    read_timeout_s: Seconds = 600.0
    # How often the engine's /metrics is scraped to reconcile the twin and measure drift.
    reconcile_interval_s: Seconds = 1.0
    # /readyz fails when the engine has not answered for this long (or its last scrape failed).
    stale_after_s: Seconds = 5.0
    # The twin's per-request progress is re-synchronised with the tokens streamed at most this
    # often (each sync costs a few µs per running request).
    sync_interval_s: Annotated[float, Field(ge=0.0)] = 0.05
    # Response length assumed for a request without an x-block-output-tokens estimate; unset:
    # the mean of ShareGPT's reply lengths capped by the request's max_tokens.
    prior_output_tokens: Annotated[int, Field(ge=1)] | None = None
    # Requests with ignore_eos generate exactly max_tokens: treat that as the known length.
    # Benchmarks turn it off to hide true lengths from the twin.
    trust_ignore_eos: bool = True
    # Refit the step-time model to the engine's streamed steps as traffic flows, starting from
    # the profile (block.predictor.calibrating). Off: the profile alone, as configured.
    calibrate: bool = True
    max_body_bytes: Annotated[int, Field(ge=1024)] = 8 * 2**20
    log_level: str = "INFO"

    @field_validator("engine_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"engine_url must start with http:// or https:// (got {v!r})")
        return v.rstrip("/")
