"""What a router knows from its own traffic: its prefix index and a ledger of its dispatches.

Load-aware routers without a twin count what they sent where, as well as reading the engines'
gauges: llm-d's in-flight-load producer counts prompt tokens dispatched and not yet answered
(released at the first streamed token), Dynamo's KV router counts those prefill tokens and
the prompt blocks of every request still running on a worker. `RouterMemory` keeps that
ledger next to the `PrefixIndex`, so a policy with a `prefix_index` config reads all of it
from `ReplicaView.routed_*`:

* `routed_prefix_tokens`: prompt tokens the index matches on the replica;
* `routed_prefill_tokens`: uncached prompt tokens (by the index, at dispatch) of requests sent
  there whose first token has not come back;
* `routed_active_blocks`: distinct prompt blocks of the requests sent there and not finished;
* `routed_shared_blocks`: how many of this prompt's blocks those requests already hold.

The live gateway feeds it from its proxy (dispatch, first token, end); the offline cluster
model from the replicas' recorders (`SimulatedMemory`).
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from block.errors import ConfigError
from block.simulator.prefix_index import PrefixIndex, PrefixIndexConfig, prompt_hashes
from block.simulator.replica import Replica
from block.simulator.requests import Request

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class RoutedFigures:
    """One replica as the router's own memory sees it, for one request."""

    prefix_tokens: int = 0
    prefill_tokens: int = 0
    active_blocks: int = 0
    shared_blocks: int = 0


@dataclass(slots=True)
class _Dispatch(Generic[K]):
    replica: K
    prefill_tokens: int  # counted until the first token
    blocks: tuple[int, ...]  # prompt chain hashes, counted until the request ends


@dataclass(slots=True)
class _Ledger:
    prefill_tokens: int = 0
    blocks: dict[int, int] = field(default_factory=dict)  # chain hash -> requests holding it


class RouterMemory(Generic[K]):
    """The prefix index plus the ledger of dispatches, keyed by the router's replica names."""

    __slots__ = ("_dispatches", "_ledgers", "block_size", "index")

    def __init__(self, config: PrefixIndexConfig, block_size: int) -> None:
        self.index: PrefixIndex[K] = PrefixIndex(config, block_size)
        self.block_size = block_size
        self._dispatches: dict[int, _Dispatch[K]] = {}  # request id -> what it added
        self._ledgers: dict[K, _Ledger] = {}

    def figures(
        self, replicas: Sequence[K], hashes: Sequence[int], now: float
    ) -> list[RoutedFigures]:
        """What the router remembers of each replica, for a prompt with these chain hashes
        (the prompt's full blocks, as `prompt_hashes` cuts them)."""
        matched = self.index.match(hashes, now)
        out = []
        for r in replicas:
            ledger = self._ledgers.get(r)
            if ledger is None:
                out.append(RoutedFigures(prefix_tokens=matched.get(r, 0)))
                continue
            held = ledger.blocks
            shared = 0
            for h in hashes:  # a chain hash names its whole prefix: shared blocks lead
                if h not in held:
                    break
                shared += 1
            out.append(RoutedFigures(matched.get(r, 0), ledger.prefill_tokens, len(held), shared))
        return out

    def dispatched(
        self,
        replica: K,
        rid: int,
        hashes: Sequence[int],
        prompt_tokens: int,
        now: float,
        kv_blocks: int,
    ) -> None:
        """The router sent request `rid` (a prompt with these chain hashes) to `replica`. A
        retry of `rid` replaces its earlier attempt."""
        self.finished(rid)
        cached = self.index.match(hashes, now).get(replica, 0)
        self.index.observe(replica, hashes, now, kv_blocks)
        ledger = self._ledgers.setdefault(replica, _Ledger())
        prefill = max(0, prompt_tokens - cached)
        ledger.prefill_tokens += prefill
        holders = ledger.blocks
        for h in hashes:
            holders[h] = holders.get(h, 0) + 1
        self._dispatches[rid] = _Dispatch(replica, prefill, tuple(hashes))

    def first_token(self, rid: int) -> None:
        """The first token of `rid` came back: its prefill no longer loads the replica."""
        d = self._dispatches.get(rid)
        if d is None or not d.prefill_tokens:
            return
        ledger = self._ledgers.get(d.replica)
        if ledger is not None:
            ledger.prefill_tokens -= d.prefill_tokens
        d.prefill_tokens = 0

    def finished(self, rid: int) -> None:
        """`rid` ended (completed, failed or cancelled): it holds nothing any more."""
        self.first_token(rid)
        d = self._dispatches.pop(rid, None)
        ledger = None if d is None else self._ledgers.get(d.replica)
        if d is None or ledger is None:
            return
        holders = ledger.blocks
        for h in d.blocks:
            left = holders[h] - 1
            if left:
                holders[h] = left
            else:
                del holders[h]

    def forget(self, replica: K) -> None:
        """The replica left the pool: drop what the router remembered of it, its requests
        included (their later first tokens and ends are then ignored)."""
        self.index.forget(replica)
        self._ledgers.pop(replica, None)
        gone = [rid for rid, d in self._dispatches.items() if d.replica == replica]
        for rid in gone:
            del self._dispatches[rid]


class SimulatedMemory:
    """A `RouterMemory` over simulated replicas, told of first tokens and completions by the
    replicas' recorders, as a live router learns of them from the responses it relays."""

    __slots__ = ("_done", "_first", "memory", "replicas")

    def __init__(self, config: PrefixIndexConfig, replicas: Sequence[Replica]) -> None:
        sizes = {r.config.block_size for r in replicas}
        if len(sizes) != 1:
            raise ConfigError(f"replicas disagree on the KV block size: {sorted(sizes)}")
        self.memory: RouterMemory[int] = RouterMemory(config, sizes.pop())
        self.replicas = replicas
        # Recorders only ever add entries, in event order: a cursor per replica and kind
        # finds the new ones without scanning the old.
        self._first = [0] * len(replicas)
        self._done = [0] * len(replicas)

    def catch_up(self) -> None:
        """Take in the first tokens and completions recorded since the last call."""
        mem = self.memory
        for i, r in enumerate(self.replicas):
            first, done = r.recorder.first_token, r.recorder.finished
            if len(first) > self._first[i]:
                for rid in itertools.islice(first, self._first[i], None):
                    mem.first_token(rid)
                self._first[i] = len(first)
            if len(done) > self._done[i]:
                for rid in itertools.islice(done, self._done[i], None):
                    mem.finished(rid)
                self._done[i] = len(done)

    def figures(self, candidates: Sequence[int], req: Request, now: float) -> list[RoutedFigures]:
        return self.memory.figures(candidates, self._hashes(req), now)

    def dispatched(self, replica: int, req: Request, now: float) -> None:
        self.memory.dispatched(
            replica,
            req.rid,
            self._hashes(req),
            req.prompt_tokens,
            now,
            self.replicas[replica].num_blocks,
        )

    def _hashes(self, req: Request) -> tuple[int, ...]:
        return prompt_hashes(req.block_hashes, req.prompt_tokens, self.memory.block_size)
