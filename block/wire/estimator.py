"""Bodies of the length estimator's HTTP API (`block estimator serve`).

    POST /v1/estimate   EstimateRequest  →  EstimateResponse

`prompt` is one string or a list of up to `MAX_PROMPTS` strings; the response has one
`LengthEstimate` per prompt, in order. Token counts are in the Llama-3 tokenizer, EOS not counted.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from block.wire import WireModel

MAX_PROMPTS = 256
Prompt = Annotated[str, StringConstraints(min_length=1)]


class EstimateRequest(WireModel):
    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=MAX_PROMPTS)]

    @model_validator(mode="after")
    def _not_blank(self) -> EstimateRequest:
        for i, p in enumerate(self.prompts):
            if not p.strip():
                raise ValueError(f"prompt {i} is blank")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class LengthQuantiles(WireModel):
    p10: Annotated[int, Field(ge=1)]
    p50: Annotated[int, Field(ge=1)]
    p90: Annotated[int, Field(ge=1)]


class LengthEstimate(WireModel):
    # The point estimate (the median).
    tokens: Annotated[int, Field(ge=1)]
    quantiles: LengthQuantiles


class EstimateResponse(WireModel):
    # The artifact that answered (changes with every retraining).
    model: str
    estimates: list[LengthEstimate]


__all__ = [
    "MAX_PROMPTS",
    "EstimateRequest",
    "EstimateResponse",
    "LengthEstimate",
    "LengthQuantiles",
]
