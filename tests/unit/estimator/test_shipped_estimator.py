"""The serving path on the artifact shipped in the package."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from block.errors import InvalidRequest
from block.estimator import LengthEstimator, artifacts

PROMPTS = [
    "Write a detailed 1500-word essay on the causes of the First World War.",
    "What is the capital of France? Answer with one word.",
    "Translate to German: good morning",
    "def add(a, b):\n    return a - b\n\nFind the bug in this Python function and fix it.",
    "请用中文写一篇关于春天的短文。",
]


@pytest.fixture(scope="module")
def estimator() -> LengthEstimator:
    return LengthEstimator.load_default()


def test_estimates_are_ordered_and_in_sane_bounds(estimator: LengthEstimator) -> None:
    for est in estimator.estimate(PROMPTS):
        assert 1 <= est.p10_tokens <= est.p50_tokens <= est.p90_tokens <= 4096
        assert est.median_tokens == est.p50_tokens


def test_long_writing_tasks_get_longer_estimates_than_one_word_answers(
    estimator: LengthEstimator,
) -> None:
    essay, one_word = estimator.estimate(PROMPTS[:2])
    assert essay.p50_tokens > 2 * one_word.p50_tokens


def test_estimates_are_deterministic_and_batch_invariant(estimator: LengthEstimator) -> None:
    batch = estimator.estimate(PROMPTS)
    assert estimator.estimate(PROMPTS) == batch
    assert [estimator.estimate([p])[0] for p in PROMPTS] == batch
    assert LengthEstimator.load_default().estimate(PROMPTS) == batch


def test_threads_share_one_estimator(estimator: LengthEstimator) -> None:
    expected = estimator.estimate(PROMPTS)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: estimator.estimate(PROMPTS), range(16)))
    assert all(r == expected for r in results)


@pytest.mark.parametrize("bad", ["", "   \n\t"])
def test_empty_prompt_is_a_clear_error(estimator: LengthEstimator, bad: str) -> None:
    with pytest.raises(InvalidRequest, match="prompt 1 is empty"):
        estimator.estimate(["fine", bad])


def test_non_strings_and_bare_strings_are_rejected(estimator: LengthEstimator) -> None:
    with pytest.raises(InvalidRequest, match="not a string"):
        estimator.estimate([None])  # type: ignore[list-item]
    with pytest.raises(InvalidRequest, match="list of prompts"):
        estimator.estimate("a bare string")


def test_no_prompts_no_estimates(estimator: LengthEstimator) -> None:
    assert estimator.estimate([]) == []


def test_huge_prompt_is_cut_not_crashed(estimator: LengthEstimator) -> None:
    huge = "Summarise the following text. " + "lorem ipsum dolor sit amet " * 200_000
    [est] = estimator.estimate([huge])
    [cut] = estimator.estimate([huge[: estimator.max_chars]])
    assert est == cut
    assert 1 <= est.p10_tokens <= est.p50_tokens <= est.p90_tokens


def test_prior_is_the_training_distribution(estimator: LengthEstimator) -> None:
    prior = estimator.prior
    assert 1 <= prior.p10_tokens < prior.p50_tokens < prior.p90_tokens
    manifest = artifacts.load().manifest
    assert manifest["dataset"]["splits"]["train"] > 1000


def test_baseline_mode_uses_the_prompt_length_only(estimator: LengthEstimator) -> None:
    baseline = LengthEstimator(artifacts.load(), use_baseline=True)
    a, b = baseline.estimate(["tell me a story", "tell me a poem"])
    assert a == b  # same WordPiece count, so the same estimate
    assert baseline.name == estimator.name
