"""The live experiment at its smallest: one engine twin, its sidecar and a gateway as real
processes on loopback, a handful of requests per policy, everything stopped afterwards."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from block import cli


def test_live_comparison_runs_policies_and_stops_every_process(tmp_path: Path) -> None:
    rc = cli.main(["experiment", "live", "--out", str(tmp_path), "--quiet",
                   "--live-replicas", "2", "--live-requests", "6", "--qps", "6",
                   "--max-tokens-cap", "16", "--policies", "block,round-robin"])  # fmt: skip
    assert rc == 0
    with (tmp_path / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    live = {r["policy"]: r for r in rows if r["mode"] == "live"}
    assert set(live) == {"block", "round-robin"}
    assert all(int(r["completed"]) == 6 and int(r["failed"]) == 0 for r in live.values())
    assert {r["policy"] for r in rows if r["mode"] == "simulated"} == {"block", "round-robin"}
    assert (tmp_path / "comparison.png").is_file()
    assert _children() == [], "processes outlived the experiment"
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert logs == ["engine-0.log", "engine-1.log", "gateway-block.log",
                    "gateway-round-robin.log", "predictor-0.log", "predictor-1.log"]  # fmt: skip


def _children() -> list[str]:
    """Command lines of this process's live (non-zombie) children."""
    me = str(os.getpid())
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            out.append((stat.parent / "cmdline").read_text().replace("\0", " "))
    return out
