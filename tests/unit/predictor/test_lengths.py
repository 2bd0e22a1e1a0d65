"""The length distribution: priors, draws and conditional remaining lengths."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from block.errors import ConfigError
from block.predictor.lengths import MIN_TAIL, PACKAGED, LengthDistribution


def brute_remaining(data: list[int], generated: int, cap: int | None) -> float:
    longer = [x for x in data if x > generated]
    capped = [min(x, cap) if cap is not None else x for x in longer]
    return sum(capped) / len(capped) - generated


def test_conditional_remaining_matches_its_definition() -> None:
    rng = random.Random(1)
    data = [int(rng.paretovariate(1.5) * 20) + 1 for _ in range(5000)]
    dist = LengthDistribution(data)
    kept = [x for x in data if x <= 4.0 * np.quantile(data, 0.99)]
    for generated in (0, 1, 10, 37, 100, 250):
        for cap in (None, 300, 1000):
            if cap is not None and generated >= cap:
                continue
            want = brute_remaining(kept, generated, cap)
            got = dist.remaining(generated, cap)
            assert got == pytest.approx(max(1, round(want)), abs=1), (generated, cap)


def test_remaining_grows_with_progress_on_a_heavy_tail() -> None:
    """Not a constant: a long answer is expected to go on for longer (Pareto tail)."""
    rng = random.Random(2)
    dist = LengthDistribution([int(rng.paretovariate(1.2) * 10) for _ in range(20000)])
    assert dist.remaining(10) < dist.remaining(100) < dist.remaining(1000)


def test_caps_and_bounds() -> None:
    dist = LengthDistribution.sharegpt()
    assert 200 < dist.expected() < 300  # ShareGPT's mean first reply, Llama-3 tokens
    assert dist.expected(50) <= 50
    for generated in (0, 10, 500, 5000, 50_000):
        assert dist.remaining(generated) >= 1
        assert dist.remaining(generated, generated + 7) <= 7
    assert dist.remaining(99, 99) == 1  # at its cap: one more step at most
    # Beyond the data the tail is extrapolated, still finite and growing.
    assert dist.remaining(dist.max_length * 2) > dist.remaining(dist.max_length)


def test_outliers_do_not_own_the_tail() -> None:
    data = [100] * 1000 + [1_000_000]
    dist = LengthDistribution(data)
    assert dist.max_length == 100 and dist.expected() == 100


def test_draws_are_seeded_and_from_the_data() -> None:
    data = list(range(1, 200))
    dist = LengthDistribution(data)
    a = [dist.sample(random.Random(5)) for _ in range(3)]
    b = [dist.sample(random.Random(5)) for _ in range(3)]
    assert a == b and all(x in data for x in a)


def test_too_little_data_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        LengthDistribution([5] * MIN_TAIL)
    with pytest.raises(ValueError):
        LengthDistribution([5] * 100).remaining(-1)


def test_the_packaged_lengths_are_the_datasets() -> None:
    """The copy shipped with Block equals a fresh count of ShareGPT (cached by the simulator)."""
    from block.simulator.workloads import sharegpt_lengths

    doc = json.loads(PACKAGED.read_text())
    assert doc["output_tokens"] == [int(x) for x in sharegpt_lengths()[:, 1]]
