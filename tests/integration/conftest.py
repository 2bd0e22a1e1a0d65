"""What every in-process integration test shares: the tokenizer, ShareGPT length
distribution and A100 latency model, loaded once per session."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from block.predictor.lengths import LengthDistribution
from block.predictor.tokens import Tokens
from block.simulator.latency import LatencyModel

MODEL = "meta-llama/Llama-2-7b-hf"


@dataclass(frozen=True)
class Resources:
    tokens: Tokens
    lengths: LengthDistribution
    latency: LatencyModel


@pytest.fixture(scope="session")
def resources() -> Resources:
    return Resources(
        Tokens.llama3(), LengthDistribution.sharegpt(), LatencyModel.load("a100", MODEL)
    )
