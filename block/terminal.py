"""Consoles for what a person reads: tables and summaries that stay whole in a log.

Rich sizes its output to the terminal, and to 80 columns when the output is not one (piped to a
file or `tee`). At 80 a table of eight columns cuts its headers and policy names ("ttft_p5…",
"least-r…"), which is exactly where people read them later: CI logs, `make demo | tee`. Off a
terminal the consoles here render at `LOG_WIDTH` instead; tables take only the width they need,
so nothing pads, and prose lines are not wrapped. `COLUMNS` in the environment still wins, as it
does for rich.
"""

from __future__ import annotations

import os

from rich.console import Console

# Wide enough for the widest table any command prints (the experiments' nine columns).
LOG_WIDTH = 160


def console(*, stderr: bool = False, quiet: bool = False) -> Console:
    """A console on stdout (or stderr) that keeps every header and name whole off a terminal."""
    if Console(stderr=stderr).is_terminal or os.environ.get("COLUMNS"):
        return Console(stderr=stderr, quiet=quiet)
    # Off a terminal prose lines are not wrapped either: a log line is one line.
    return Console(stderr=stderr, quiet=quiet, width=LOG_WIDTH, soft_wrap=True)
