"""Shared fixtures: the real A100 Llama-2-7B profile that ships with the package."""

from __future__ import annotations

import pytest

from block.simulator.latency import LatencyModel


@pytest.fixture(scope="session")
def latency() -> LatencyModel:
    return LatencyModel.load("a100", "meta-llama/Llama-2-7b-hf")
