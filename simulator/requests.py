"""Requests and what happened to them: the simulator's input and per-request records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NewType

RequestId = NewType("RequestId", int)


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request as the engine sees it.

    `output_tokens` is the number of tokens the replica will generate: the true length in
    offline simulations, an estimate inside the predictor.
    """

    rid: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    # Prefix-cache hash chain over the full KV blocks of prompt + output tokens (None: no
    # token content known, never hits the cache). See block.simulator.prefix_cache.
    block_hashes: tuple[int, ...] | None = None


@dataclass(slots=True)
class Recorder:
    """Per-request timestamps kept by a replica (absent key = not happened yet).

    A fork of a replica gets a fresh recorder, so a prediction never copies the history of a
    long simulation.
    """

    arrival: dict[int, float] = field(default_factory=dict)
    scheduled: dict[int, float] = field(default_factory=dict)
    first_token: dict[int, float] = field(default_factory=dict)
    finished: dict[int, float] = field(default_factory=dict)
    preemptions: dict[int, int] = field(default_factory=dict)
    cached_tokens: dict[int, int] = field(default_factory=dict)  # prefix-cache hit at admission


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """Everything measured about one completed request (seconds, absolute sim time)."""

    rid: int
    replica: int
    arrival_s: float
    scheduled_s: float
    first_token_s: float
    finished_s: float
    prompt_tokens: int
    output_tokens: int
    preemptions: int
    cached_tokens: int = 0  # prompt tokens served from the prefix cache

    @property
    def queue_s(self) -> float:
        return self.scheduled_s - self.arrival_s

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float:
        return self.finished_s - self.arrival_s

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first (0 for one-token answers)."""
        if self.output_tokens <= 1:
            return 0.0
        return (self.finished_s - self.first_token_s) / (self.output_tokens - 1)
