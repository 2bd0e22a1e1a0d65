"""Tables printed off a terminal (a pipe, `tee`, a CI log) keep every header and name whole."""

from __future__ import annotations

import io

import pytest
from rich.table import Table

from block import terminal

HEADERS = ("policy", "mode", "ttft_p50_s", "ttft_p99_s", "e2e_p50_s", "e2e_p99_s",
           "throughput_rps", "goodput_rps", "capacity_qps")  # fmt: skip
NAMES = ("least-requests", "prefix-affinity", "block-ttft-estimated")


def _render(monkeypatch: pytest.MonkeyPatch, columns: str | None) -> str:
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    console = terminal.console()
    assert not console.is_terminal  # pytest captures stdout: this is the piped case
    console.file = io.StringIO()
    table = Table(title="p50 / p99 latency by policy at 13 req/s (seconds)")
    for h in HEADERS:
        table.add_column(h, justify="right")
    for name in NAMES:
        table.add_row(name, "simulated", *("0.123",) * (len(HEADERS) - 2))
    console.print(table)
    console.print("a long prose line " * 12)
    text = console.file.getvalue()
    assert isinstance(text, str)
    return text


def test_piped_tables_keep_every_header_and_name_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _render(monkeypatch, None)
    assert "…" not in text
    for word in (*HEADERS, *NAMES, "simulated"):
        assert word in text
    assert max(len(line) for line in text.splitlines()) > 80  # wider than rich's pipe default
    # Prose is one log line, not wrapped at any width.
    assert ("a long prose line " * 12).rstrip() in text


def test_columns_in_the_environment_still_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _render(monkeypatch, "60")
    assert max(len(line) for line in text.splitlines()) <= 60
