"""Token bursts of many streams turned into engine steps, and the bursts that must not count."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from block.simulator.observed_steps import ObservedStep, Seen, StepObserver


@dataclass
class _Req:
    rid: int
    arrival_s: float
    prompt: int
    output: int
    streamed: int = 0
    streaming: bool = True


@dataclass
class _Engine:
    """A toy continuous-batching engine: each step decodes every running request and prefills
    whole prompts that fit the budget; step time is a known function of the composition."""

    budget: int = 512
    now: float = 0.0
    running: list[_Req] = field(default_factory=list)
    waiting: list[_Req] = field(default_factory=list)

    @staticmethod
    def duration(num_decode: int, kv: int, prefill: int) -> float:
        return 0.008 + 2e-4 * num_decode + 1e-7 * kv + 3e-5 * prefill

    def step(self) -> tuple[float, list[_Req], tuple[int, int, int]]:
        decodes = [r for r in self.running if r.streamed > 0]
        kv = sum(r.prompt + r.streamed for r in decodes)
        room = self.budget - len(decodes)
        new = []
        while self.waiting and self.waiting[0].arrival_s <= self.now:
            if self.waiting[0].prompt > room:
                break
            r = self.waiting.pop(0)
            room -= r.prompt
            new.append(r)
        prefill = sum(r.prompt for r in new)
        self.now += self.duration(len(decodes), kv, prefill)
        self.running += new
        return self.now, decodes + new, (len(decodes), kv, prefill)


def _run(requests: list[_Req], jitter_s: float, seed: int) -> tuple[list[ObservedStep], dict]:
    rng = random.Random(seed)
    engine = _Engine(waiting=sorted(requests, key=lambda r: r.arrival_s))
    obs = StepObserver(token_budget=engine.budget)
    truth: dict[float, tuple[float, tuple[int, int, int]]] = {}
    steps: list[ObservedStep] = []
    in_flight: dict[int, _Req] = {}
    prev_end = 0.0
    while engine.running or engine.waiting:
        if not engine.running and engine.waiting:
            engine.now = max(engine.now, engine.waiting[0].arrival_s)
        for r in engine.waiting:
            if r.arrival_s <= engine.now:
                in_flight[r.rid] = r
        end, emitted, shape = engine.step()
        truth[end] = (end - prev_end, shape)
        prev_end = end
        for i, r in enumerate(rng.sample(emitted, len(emitted))):
            at = end + i * jitter_s / max(len(emitted), 1)
            seen = {
                q.rid: Seen(q.streaming, q.streamed, q.arrival_s, q.prompt)
                for q in in_flight.values()
            }
            step = obs.token(r.rid, at, 1, seen[r.rid], lambda s=seen: s)
            if step is not None:
                steps.append(step)
            r.streamed += 1
            if r.streamed >= r.output:
                engine.running.remove(r)
                del in_flight[r.rid]
    return steps, truth


def test_clean_steps_are_the_engine_steps() -> None:
    rng = random.Random(1)
    reqs = [
        _Req(i, rng.uniform(0, 2.0), rng.randint(20, 300), rng.randint(5, 60)) for i in range(40)
    ]
    steps, truth = _run(reqs, jitter_s=0.0008, seed=2)
    assert len(steps) > 100
    ends = sorted(truth)
    for s in steps:
        end = min(ends, key=lambda e: abs(e - s.end_s))
        seconds, (num_decode, kv, prefill) = truth[end]
        assert abs(s.seconds - seconds) < 0.001
        assert s.shape.num_decode == num_decode and s.shape.decode_kv_total == kv
        assert sum(c for c, _ in s.shape.prefill) == prefill
    assert any(s.shape.prefill for s in steps) and any(not s.shape.prefill for s in steps)


def test_hidden_work_and_unstreamed_requests_make_steps_unclean() -> None:
    obs = StepObserver(token_budget=512)
    a = Seen(True, 3, 0.0, 100)
    b_waiting = Seen(True, 0, 0.0, 2000)  # a long prompt: its chunks stream nothing
    seen = {1: a, 2: b_waiting}
    assert obs.token(1, 1.00, 1, a, lambda: seen) is None
    a = Seen(True, 4, 0.0, 100)
    seen = {1: a, 2: b_waiting}
    assert obs.token(1, 1.02, 1, a, lambda: seen) is None  # closes the first burst: no start
    a = Seen(True, 5, 0.0, 100)
    seen = {1: a, 2: b_waiting}
    assert obs.token(1, 1.04, 1, a, lambda: seen) is None  # request 2 may have prefilled
    assert obs.counts.skipped == {"after_idle": 1, "hidden_prefill": 1}
    # Without request 2, the same burst is clean.
    a = Seen(True, 6, 0.0, 100)
    step = obs.token(1, 1.06, 1, a, lambda: {1: a})
    assert step is not None and abs(step.seconds - 0.02) < 1e-9
    assert step.shape.num_decode == 1 and step.shape.decode_kv_total == 105
    # An unstreamed request in flight hides its progress.
    c = Seen(False, 0, 0.5, 50)
    a = Seen(True, 7, 0.0, 100)
    assert obs.token(1, 1.08, 1, a, lambda: {1: a, 3: c}) is None
    assert obs.counts.skipped["unstreamed_in_flight"] == 1


def test_a_decode_without_its_token_is_unclean() -> None:
    obs = StepObserver(token_budget=512)
    x, y = Seen(True, 1, 0.0, 10), Seen(True, 1, 0.0, 10)
    obs.token(1, 0.00, 1, x, lambda: {1: x, 2: y})
    obs.token(2, 0.0005, 1, y, lambda: {1: x, 2: y})
    x2, y2 = Seen(True, 2, 0.0, 10), Seen(True, 2, 0.0, 10)
    obs.token(1, 0.02, 1, x2, lambda: {1: x2, 2: y2})  # closes burst 1 (after idle)
    x3 = Seen(True, 3, 0.0, 10)
    # Request 2 produced nothing in burst 2 (its token was late, or it stalled).
    assert obs.token(1, 0.04, 1, x3, lambda: {1: x3, 2: y2}) is None
    assert obs.counts.skipped.get("missing_decode") == 1
