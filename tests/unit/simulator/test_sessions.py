"""Multi-turn sessions: closed-loop arrivals, growing prompts, and the prefix experiment."""

from __future__ import annotations

import json
from pathlib import Path

from block import cli
from block.simulator import conversations, policies
from block.simulator.latency import LatencyModel
from block.simulator.replica import Replica, ReplicaConfig


def test_sessions_resend_the_conversation() -> None:
    sessions = conversations.sharegpt_sessions()[:50]
    multi = [s for s in sessions if len(s.turns) > 1]
    assert multi
    for s in multi:
        for (p0, o0, h0), (p1, _, h1) in zip(s.turns, s.turns[1:], strict=False):
            assert p1 > p0 + o0  # the new prompt holds the whole previous exchange
            full = (p0 + o0) // 16
            assert h1[:full] == h0[:full]  # so its blocks hash the same


def test_follow_ups_wait_for_answers_and_hit_the_cache(latency: LatencyModel) -> None:
    sessions = conversations.sharegpt_sessions()[:40]
    reps = [Replica(latency, ReplicaConfig("vllm", 2048, 64), i) for i in range(2)]
    records = conversations.simulate_sessions(
        reps, policies.make_policy("prefix-affinity"), sessions, 2.0, think_s=1.0, seed=3
    )
    assert len(records) == sum(len(s.turns) for s in sessions)
    assert sum(r.cached_tokens for r in records) > 0
    by_arrival = sorted(records, key=lambda r: r.arrival_s)
    assert by_arrival[0].cached_tokens == 0


def test_prefix_experiment_tiny(tmp_path: Path) -> None:
    code = cli.main(
        ["experiment", "prefix", "--out", str(tmp_path), "--sessions", "30", "--rates", "2",
         "--policies", "block-ttft+prefix,prefix-affinity"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["at_load_point"]) == {"block-ttft+prefix", "prefix-affinity"}
    assert (tmp_path / "prefix.png").stat().st_size > 0


def test_system_prompt_workload_shares_prefixes() -> None:
    sessions = conversations.system_prompt_sessions()
    assert len(sessions) > 1000
    firsts = {s.turns[0][2][0] for s in sessions}
    assert 2 <= len(firsts) <= 8  # one chain head per shared system prompt
    by_head: dict[int, list[tuple[int, ...]]] = {}
    for s in sessions:
        by_head.setdefault(s.turns[0][2][0], []).append(s.turns[0][2])
    for chains in by_head.values():
        if len(chains) > 1:
            assert chains[0][:64] == chains[1][:64]  # 1,024 system tokens = 64 shared blocks
