"""The predictor sidecar's API: `POST /v1/predict` and `GET /v1/state` bodies.

A gateway asks each replica's predictor "what if you got this request now?"; the answer carries
the predicted latencies plus the replica's load figures, so one round trip feeds every policy.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, Strict, model_validator

from block.wire import WireModel

TokenCount = Annotated[int, Field(ge=1, le=1_048_576)]
# A prefix-cache block hash (block.simulator.prefix_cache.chain_hashes: 62 bits).
BlockHash = Annotated[int, Field(ge=0, lt=1 << 62)]


class Candidate(WireModel):
    prompt_tokens: TokenCount
    output_tokens: TokenCount  # the caller's estimate of the response length
    # Prefix-cache hash chain over the prompt's full blocks (the predictor's block size,
    # 16 tokens by default, as vLLM's), from the same tokenizer and template; optional. The
    # predicted TTFT then counts the blocks the replica holds.
    block_hashes: Annotated[list[BlockHash], Field(max_length=65_536)] | None = None


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
    prefix_hit_tokens: int = 0  # prompt tokens the replica holds in its prefix cache


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


class EngineLoad(WireModel):
    """The engine's own load gauges at the last scrape of its /metrics."""

    num_running: float
    num_waiting: float
    kv_used_ratio: float | None


class TwinConfig(WireModel):
    """The engine scheduler settings the live twin simulates."""

    scheduler: str
    max_num_batched_tokens: int
    max_num_seqs: int
    num_blocks: int
    block_size: int
    max_model_len: int


class StateResponse(WireModel):
    """`GET /v1/state`: the live twin's view, the engine's, and how far apart they are."""

    model: str
    engine_url: str
    engine_up: bool
    engine_error: str | None = None
    load: LoadFigures  # the twin's
    engine: EngineLoad | None = None  # None until a scrape succeeded
    drift: EngineLoad | None = None  # engine minus twin, at the last scrape
    inflight: int  # requests proxied and not finished
    state_age_s: float
    length_extensions: int  # in-flight requests that outran their estimate, so far
    resyncs: int  # corrections of the twin's progress to the tokens streamed, so far
    config: TwinConfig
    # [prompt_tokens, output_tokens] of the requests completed last, oldest first (every
    # gateway's): the request-size mix the autoscaler simulates.
    recent_sizes: Annotated[
        # A JSON array is a pair here: the one place where a list stands for a tuple.
        list[
            Annotated[
                tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]], Strict(False)
            ]
        ],
        Field(max_length=512),
    ] = Field(default_factory=list)
