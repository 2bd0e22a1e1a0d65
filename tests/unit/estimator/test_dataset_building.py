"""Dataset building on a real slice of ShareGPT: cleaning rules, splits, token counts, cache."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from block.estimator import datasets, sharegpt


def _pairs(text: str) -> tuple[list[sharegpt.Pair], sharegpt.Rejections]:
    rej = sharegpt.Rejections()
    return list(sharegpt.first_pairs(sharegpt.iter_records(text, rej), rej)), rej


def test_cut_off_tail_is_dropped_not_fatal(dump_head: Callable[[int], str]) -> None:
    pairs, rej = _pairs(dump_head(400_000))
    assert rej.truncated_tail
    assert rej.num_records > 10
    assert len(pairs) > 5


def test_whole_array_reads_to_the_end(dump_head: Callable[[int], str]) -> None:
    text = dump_head(400_000)
    rej = sharegpt.Rejections()
    records = list(sharegpt.iter_records(text, rej))
    complete = json.dumps(records)
    again = sharegpt.Rejections()
    assert list(sharegpt.iter_records(complete, again)) == records
    assert not again.truncated_tail


def test_rules_drop_repeats_later_chunks_and_foreign_roles(dump_head: Callable[[int], str]) -> None:
    text = dump_head(3_000_000)
    pairs, rej = _pairs(text)
    ids = [p.conversation_id for p in pairs]
    assert len(ids) == len(set(ids))
    assert all(i.endswith("_0") for i in ids)
    assert rej.duplicate_id > 0 and rej.later_chunk > 0 and rej.wrong_roles > 0
    assert len({(p.prompt, p.reply) for p in pairs}) == len(pairs)
    assert all(p.prompt.strip() and p.reply.strip() for p in pairs)


def test_first_user_turn_after_system_turns_is_used() -> None:
    record = {
        "id": "abc_0",
        "conversations": [
            {"from": "system", "value": "be brief"},
            {"from": "human", "value": "hello there"},
            {"from": "gpt", "value": "Hi!"},
        ],
    }
    rej = sharegpt.Rejections()
    [pair] = sharegpt.first_pairs(iter([record]), rej)
    assert (pair.prompt, pair.reply) == ("hello there", "Hi!")


def test_bing_replies_and_blank_prompts_are_rejected() -> None:
    records = [
        {
            "id": "a_0",
            "conversations": [{"from": "human", "value": "q"}, {"from": "bing", "value": "a"}],
        },
        {
            "id": "b_0",
            "conversations": [{"from": "human", "value": "  "}, {"from": "gpt", "value": "a"}],
        },
    ]
    rej = sharegpt.Rejections()
    assert list(sharegpt.first_pairs(iter(records), rej)) == []
    assert (rej.wrong_roles, rej.empty_text) == (1, 1)


def test_split_depends_on_the_conversation_only(dump_head: Callable[[int], str]) -> None:
    assert datasets.split_of("QWJhYvA_0") == datasets.split_of("QWJhYvA_3")
    pairs, _ = _pairs(dump_head(3_000_000))
    splits = [datasets.split_of(p.conversation_id) for p in pairs]
    assert set(splits) == {"train", "val", "test"}
    assert splits.count("train") > len(splits) // 2


def test_reply_lengths_are_llama3_counts(small_dump: Path) -> None:
    data = datasets.build(small_dump)
    assert data.info["num_examples"] == len(data.examples) > 100
    assert all(e.reply_tokens >= 1 for e in data.examples)
    first = data.examples[0]
    pairs, _ = _pairs(small_dump.read_text(encoding="utf-8"))
    assert datasets.count_tokens([pairs[0].reply]) == [first.reply_tokens]
    # Llama-3 averages roughly 3-5 characters per English token.
    assert 2 < len(pairs[0].reply) / first.reply_tokens < 8


def test_reply_cap_drops_long_replies(small_dump: Path) -> None:
    full = datasets.build(small_dump)
    capped = datasets.build(small_dump, max_reply_tokens=200)
    assert all(e.reply_tokens <= 200 for e in capped.examples)
    dropped = sum(1 for e in full.examples if e.reply_tokens > 200)
    assert capped.info["rejections"]["reply_over_cap"] == dropped > 0


def test_cache_round_trip_is_byte_stable(small_dump: Path, tmp_path: Path) -> None:
    first = datasets.load_or_build(tmp_path, small_dump)
    [cached] = list(tmp_path.glob("sharegpt-*.jsonl.gz"))
    raw = cached.read_bytes()
    again = datasets.load_or_build(tmp_path, small_dump)
    assert again.examples == first.examples and again.info == first.info
    cached.unlink()
    datasets.load_or_build(tmp_path, small_dump)
    assert cached.read_bytes() == raw


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        datasets.load_or_build(tmp_path, tmp_path / "nope.json")
