"""The predictor sidecar's API: `POST /v1/predict` and `GET /v1/state` bodies.

A gateway asks each replica's predictor "what if you got this request now?"; the answer carries
the predicted latencies plus the replica's load figures, so one round trip feeds every policy.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from block.wire import WireModel

TokenCount = Annotated[int, Field(ge=1, le=1_048_576)]


class Candidate(WireModel):
    prompt_tokens: TokenCount
    output_tokens: TokenCount  # the caller's estimate of the response length
    # Prefix-cache block hashes of the prompt (issue: prefix awareness); optional.
    block_hashes: list[int] | None = None


class PredictRequest(WireModel):
    """Either one candidate inline (`{"prompt_tokens": .., "output_tokens": ..}`) or a list
    under `candidates`."""

    candidates: Annotated[list[Candidate], Field(min_length=1, max_length=64)]
    impact: bool = False  # also predict the delay the candidate adds to in-flight requests

    @model_validator(mode="before")
    @classmethod
    def _inline_candidate(cls, data: Any) -> Any:
        if isinstance(data, dict) and "candidates" not in data and "prompt_tokens" in data:
            inline = {
                k: data[k] for k in ("prompt_tokens", "output_tokens", "block_hashes") if k in data
            }
            rest = {k: v for k, v in data.items() if k not in inline}
            return {**rest, "candidates": [inline]}
        return data


class PredictedLatency(WireModel):
    queue_s: float
    ttft_s: float
    e2e_s: float
    added_delay_s: float | None = None


class LoadFigures(WireModel):
    num_running: int
    num_waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    block_size: int
    waiting_prefill_tokens: int


class PredictResponse(WireModel):
    """`predictions[i]` answers `candidates[i]`; the top-level latencies repeat the first."""

    queue_s: float
    ttft_s: float
    e2e_s: float
    added_delay_s: float | None = None
    predictions: list[PredictedLatency]
    load: LoadFigures
    state_age_s: float  # time since the live twin last heard from the engine
    model: str
    compute_s: float  # time the predictor spent answering
