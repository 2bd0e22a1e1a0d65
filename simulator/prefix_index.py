"""A router's own memory of which prompt blocks it sent where: an approximate prefix index.

Routers that do not ask the engines what they cache (llm-d's approximate prefix-cache
producer, SGLang's router-side radix tree, AIBrix's prefix table, Dynamo without KV events)
remember the prompt block hashes of every request they route, per replica, and match each new
prompt against that memory. A match is a guess, not a cache hit: the engine may have evicted
those blocks since, or the router's memory may have forgotten blocks the engine still holds.
The exact hit is the predictor's business (`ReplicaView.prefix_hit_tokens`); this is what a
router without a twin has.

Keys are the hash chain the engine uses (`prefix_cache.chain_hashes`), over the prompt's full
blocks only: a router sees prompts, never answers. An index with coarser blocks (llm-d hashes
64-token blocks over engines' 16-token ones) keeps every n-th chain hash, which names the
same prefix. Memory is bounded per replica: at most `capacity_blocks` keys, the least
recently routed forgotten first (LRU), and keys routed longer than `ttl_s` ago stop matching.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from block.errors import ConfigError

K = TypeVar("K", bound=Hashable)  # how the router names a replica (index, URL, pod name)


@dataclass(frozen=True, slots=True)
class PrefixIndexConfig:
    """How one router's prefix index is shaped (the constants each project ships)."""

    # Tokens per index block, rounded to whole engine blocks (at least one); None: the
    # engine's own block size.
    block_tokens: int | None = None
    # Keys kept per replica; None: as many as the replica has KV blocks (llm-d's auto-tune).
    capacity_blocks: int | None = None
    # Seconds after which a key routed and not routed again no longer matches; None: never.
    ttl_s: float | None = None
    # Prompt tokens hashed and matched at most (a cap on router CPU); None: the whole prompt.
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("block_tokens", "capacity_blocks", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"prefix index {name} must be at least 1, got {value}")
        if self.ttl_s is not None and self.ttl_s <= 0:
            raise ConfigError(f"prefix index ttl_s must be positive, got {self.ttl_s}")

    def stride(self, engine_block_size: int) -> int:
        """Engine blocks per index block."""
        if self.block_tokens is None:
            return 1
        return max(1, self.block_tokens // engine_block_size)

    def index_block_tokens(self, engine_block_size: int) -> int:
        return self.stride(engine_block_size) * engine_block_size

    def prompt_blocks(self, prompt_tokens: int, engine_block_size: int) -> int:
        """How many index blocks of a prompt the router hashes (the denominator of a match
        ratio): full blocks only, within `max_tokens`."""
        tokens = prompt_tokens if self.max_tokens is None else min(prompt_tokens, self.max_tokens)
        return tokens // self.index_block_tokens(engine_block_size)


def prompt_hashes(
    block_hashes: Sequence[int] | None, prompt_tokens: int, block_size: int
) -> tuple[int, ...]:
    """The prompt's part of a request's hash chain (simulated requests chain prompt + answer
    together; a router only ever sees the prompt)."""
    if not block_hashes:
        return ()
    return tuple(block_hashes[: prompt_tokens // block_size])


class PrefixIndex(Generic[K]):
    """Per-replica LRU sets of prompt block keys, with the time each was last routed."""

    __slots__ = ("_lru", "_stride", "block_size", "config")

    def __init__(self, config: PrefixIndexConfig, block_size: int) -> None:
        self.config = config
        self.block_size = block_size  # the engine block size the hash chains are over
        self._stride = config.stride(block_size)
        self._lru: dict[K, OrderedDict[int, float]] = {}

    def keys(self, hashes: Sequence[int]) -> Sequence[int]:
        """The index's keys for a prompt's chain hashes: the chain hash ending each index
        block, within the token cap."""
        cfg, s = self.config, self._stride
        if cfg.max_tokens is not None:
            hashes = hashes[: cfg.max_tokens // self.block_size]
        return hashes if s == 1 else hashes[s - 1 :: s]

    def observe(self, replica: K, hashes: Sequence[int], now: float, kv_blocks: int) -> None:
        """The router sent a prompt with these chain hashes to `replica` at `now`.
        `kv_blocks` is the replica's KV capacity, the bound when the config names none."""
        keys = self.keys(hashes)
        if not keys:
            return
        lru = self._lru.setdefault(replica, OrderedDict())
        for key in keys:
            lru[key] = now
            lru.move_to_end(key)
        capacity = self.config.capacity_blocks or kv_blocks
        while len(lru) > capacity:
            lru.popitem(last=False)

    def match(self, hashes: Sequence[int], now: float) -> dict[K, int]:
        """Prompt tokens each replica is believed to hold: its longest run of the prompt's
        leading keys still remembered and fresh, in tokens. Replicas matching nothing are
        absent."""
        keys = self.keys(hashes)
        if not keys:
            return {}
        ttl = self.config.ttl_s
        oldest = -float("inf") if ttl is None else now - ttl
        block_tokens = self._stride * self.block_size
        out: dict[K, int] = {}
        for replica, lru in self._lru.items():
            n = 0
            for key in keys:
                seen = lru.get(key)
                if seen is None or seen < oldest:
                    break
                n += 1
            if n:
                out[replica] = n * block_tokens
        return out

    def forget(self, replica: K) -> None:
        """The replica left the pool: drop what the router remembered of it."""
        self._lru.pop(replica, None)

    def size(self, replica: K) -> int:
        lru = self._lru.get(replica)
        return 0 if lru is None else len(lru)
