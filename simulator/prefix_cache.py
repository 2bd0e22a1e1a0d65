"""Automatic prefix caching over full KV blocks, as vLLM does it.

A prompt's KV blocks are named by a hash chain: block i's hash covers the tokens of blocks
0..i, so equal hashes mean equal prefixes. Blocks held by running requests are *referenced*
(counted as used KV); when the last holder finishes, a hashed block stays in memory as
*evictable* and can still be hit until an allocation needs its space (least recently freed
first). Hits skip the prefill compute of the cached blocks.

The replica keeps `used_blocks = private blocks + len(refs)`; evictable blocks count as free.
"""

from __future__ import annotations

from collections.abc import Sequence


def chain_hashes(token_ids: Sequence[int], block_size: int, parent: int = 0) -> list[int]:
    """Hash chain over the full blocks of `token_ids` (deterministic across processes)."""
    out: list[int] = []
    h = parent
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        h = hash((h, tuple(token_ids[start : start + block_size]))) & ((1 << 62) - 1)
        out.append(h)
    return out


class PrefixCache:
    __slots__ = ("evictable", "refs")

    def __init__(self) -> None:
        self.refs: dict[int, int] = {}  # hash -> running requests holding the block
        self.evictable: dict[int, None] = {}  # unreferenced cached blocks, oldest first

    def copy(self) -> PrefixCache:
        other = PrefixCache.__new__(PrefixCache)
        other.refs = self.refs.copy()
        other.evictable = self.evictable.copy()
        return other

    def match(self, hashes: Sequence[int], max_blocks: int) -> tuple[int, int]:
        """Longest cached prefix (in blocks, at most `max_blocks`) and how many of those
        blocks are evictable (they become used again when acquired)."""
        refs, evictable = self.refs, self.evictable
        hit = revived = 0
        for h in hashes[:max_blocks]:
            if h in refs:
                hit += 1
            elif h in evictable:
                hit += 1
                revived += 1
            else:
                break
        return hit, revived

    def acquire(self, hashes: Sequence[int]) -> None:
        refs, evictable = self.refs, self.evictable
        for h in hashes:
            if h in refs:
                refs[h] += 1
            else:
                del evictable[h]
                refs[h] = 1

    def register(self, h: int) -> bool:
        """A request finished computing a block with hash h: share it. False when the same
        content is already cached (the request keeps its private copy, as vLLM does)."""
        if h in self.refs or h in self.evictable:
            return False
        self.refs[h] = 1
        return True

    def release(self, hashes: Sequence[int]) -> int:
        """Drop one reference each; returns how many blocks became evictable."""
        refs, evictable = self.refs, self.evictable
        freed = 0
        for h in hashes:
            left = refs[h] - 1
            if left:
                refs[h] = left
            else:
                del refs[h]
                evictable[h] = None
                freed += 1
        return freed

    def keep(self, hashes: Sequence[int]) -> None:
        """Private blocks of a finished request with these hashes stay cached (evictable)."""
        refs, evictable = self.refs, self.evictable
        for h in hashes:
            if h not in refs and h not in evictable:
                evictable[h] = None

    def evict(self, n: int) -> None:
        evictable = self.evictable
        for _ in range(min(n, len(evictable))):
            del evictable[next(iter(evictable))]
