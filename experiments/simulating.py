"""One simulated run of a cluster under a policy, with the router's beliefs modelled honestly.

`block.simulator.cluster.simulate_cluster` gives the router the engine's exact state: every
queued request's true output length. A live Block gateway does not have that. Here, with
`lengths="estimated"`, each replica has a *belief twin* (what its predictor sidecar holds): the
same requests with their estimated lengths. Before every routing decision the twin is
reconciled with what the engine has shown, as the sidecar sees it in the request path:

* a request the engine finished is dropped from the twin (`Replica.abort`);
* a request the twin thought done but the engine is still generating goes back in
  (`Replica.resume`) with the conditional expected remaining length
  E[L - g | L > g] of the training length distribution, g = tokens generated so far.

Predictions fork the twin; the engine replica (true lengths) produces the outcome. With
`lengths="oracle"` the router predicts from the engine replica itself.

The run stops early (`aborted`) once more than 1 % of the requests are certain to miss a TTFT
limit: their P99 TTFT is then above it, and the capacity search needs no more.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from block.experiments.clusters import ClusterSpec
from block.experiments.workload import Workload
from block.simulator import cluster, policies, summary
from block.simulator.prediction import Prediction, predict_one_more
from block.simulator.replica import Replica
from block.simulator.requests import Request, RequestRecord

Lengths = Literal["oracle", "estimated"]
CHECK_EVERY = 64  # requests between early-stop checks


class RemainingLength:
    """E[L - g | L > g] over an empirical length distribution (O(log n) per query)."""

    def __init__(self, lengths: Sequence[int] | np.ndarray) -> None:
        arr = np.sort(np.asarray(lengths, dtype=np.int64))
        self._sorted = arr[arr >= 1]
        self._suffix = np.concatenate([np.cumsum(self._sorted[::-1])[::-1], [0]])
        self._max = int(self._sorted[-1]) if self._sorted.size else 1

    def __call__(self, generated: int) -> int:
        i = int(np.searchsorted(self._sorted, generated, side="right"))
        tail = self._sorted.size - i
        if tail == 0:  # longer than anything seen: assume it is halfway
            return max(1, generated)
        return max(1, round(float(self._suffix[i]) / tail - generated))


@dataclass
class PointResult:
    """One (policy, workload) run."""

    summary: dict[str, Any]
    records: list[RequestRecord]
    aborted: bool
    wall_s: float
    routed: list[int]
    predictions: dict[int, Prediction] = field(default_factory=dict)


class _Beliefs:
    """Per-replica belief twins fed with estimated lengths and reconciled with the engine."""

    def __init__(self, spec: ClusterSpec, wl: Workload, remaining: RemainingLength, n: int) -> None:
        self.twins = spec.replicas_(n)
        self.wl = wl
        self.remaining = remaining

    def submit(self, idx: int, req: Request, now: float) -> None:
        belief = Request(req.rid, req.arrival_s, req.prompt_tokens, self.wl.guess(req))
        self.twins[idx].submit(belief, now)

    def reconcile(self, idx: int, engine: Replica, now: float) -> Replica:
        twin = self.twins[idx]
        twin.advance_to(now)
        held_twin = set(twin.running) | {r.rid for r, _ in twin.waiting}
        held_engine = set(engine.running) | {r.rid for r, _ in engine.waiting}
        for rid in held_twin - held_engine:  # the engine finished it
            twin.abort(rid, now)
        outran = held_engine - held_twin
        if outran:
            engine.interrupt(now)
            for rid in outran:
                if rid not in twin.recorder.finished:
                    continue  # not submitted to this twin (cannot happen; be safe)
                generated = engine.progress(rid) or 0
                req = self.wl.requests[rid]
                cap = engine.max_model_len - req.prompt_tokens  # most tokens it may produce
                if generated >= cap:
                    continue  # it must stop at its next step; nothing to add
                more = max(1, min(self.remaining(generated), cap - generated))
                belief = Request(rid, req.arrival_s, req.prompt_tokens, generated + more)
                if generated == 0:  # still queued or prefilling at the engine
                    twin.submit(belief, now)
                else:
                    twin.resume(belief, generated, now)
        return twin


def _late(
    replicas: Sequence[Replica], cursors: list[int], now: float, slo_s: float
) -> tuple[int, int]:
    """Requests whose TTFT exceeds `slo_s` already (started late, or still waiting too long).

    `cursors[i]` counts the first-token records of replica i already scanned, so each check
    reads only new records. Returns (late among the newly started, waiting past the limit)."""
    started_late = 0
    waiting_late = 0
    for i, r in enumerate(replicas):
        ft, arr = r.recorder.first_token, r.recorder.arrival
        for rid, t in itertools.islice(ft.items(), cursors[i], None):
            if t - arr[rid] > slo_s:
                started_late += 1
        cursors[i] = len(ft)
        waiting_late += sum(
            1 for q, _ in r.waiting if now - q.arrival_s > slo_s and q.rid not in ft
        )
    return started_late, waiting_late


def run(
    spec: ClusterSpec,
    policy_name: str,
    wl: Workload,
    lengths: Lengths = "oracle",
    seed: int = 0,
    stop_ttft_s: float | None = None,
    remaining: RemainingLength | None = None,
    keep_predictions: bool = False,
) -> PointResult:
    """Route `wl` over a fresh cluster built from `spec` under `policy_name`."""
    started = time.perf_counter()
    policy = policies.make_policy(policy_name)
    rng = random.Random(seed)
    reqs = wl.requests
    engines = spec.replicas_(spec.replicas)
    estimated = lengths == "estimated" and policy.needs_prediction
    beliefs = None
    if estimated:
        if remaining is None:
            remaining = RemainingLength([r.output_tokens for r in reqs])
        beliefs = _Beliefs(spec, wl, remaining, spec.replicas)
    routed = [0] * len(engines)
    # The router-side memory the other routers' rules read (their approximate prefix index and
    # ledger), kept as the offline cluster model keeps it; None for Block's and load policies.
    memory = cluster.router_memory(policy, engines)
    preds: dict[int, Prediction] = {}
    cursors = [0] * len(engines)
    started_late = 0
    limit = 0.01 * len(reqs)
    aborted = False
    for i, req in enumerate(reqs):
        now = req.arrival_s
        for e in engines:
            e.advance_to(now)
        cand = policy.candidates(len(engines), rng)
        guess = wl.guess(req) if lengths == "estimated" else req.output_tokens
        route = policies.RouteRequest(req.prompt_tokens, guess)
        remembered = None
        if memory is not None:
            memory.catch_up()
            remembered = memory.figures(cand, req, now)
        views = []
        for j, idx in enumerate(cand):
            p = None
            if policy.needs_prediction:
                model = (
                    engines[idx] if beliefs is None else beliefs.reconcile(idx, engines[idx], now)
                )
                p = predict_one_more(model, req.prompt_tokens, guess, now)
            mine = None if remembered is None else remembered[j]
            views.append(cluster.view_of(engines[idx], idx, p, routed=mine))
        choice = policy.choose(route, views, rng)
        engines[choice].submit(req, now)
        if memory is not None:
            memory.dispatched(choice, req, now)
        if beliefs is not None:
            beliefs.submit(choice, req, now)
        if keep_predictions:
            chosen = next(v.prediction for v in views if v.index == choice)
            if chosen is not None:
                preds[req.rid] = chosen
        routed[choice] += 1
        if stop_ttft_s is not None and i % CHECK_EVERY == CHECK_EVERY - 1:
            new_late, waiting_late = _late(engines, cursors, now, stop_ttft_s)
            started_late += new_late
            if started_late + waiting_late > limit:
                aborted = True
                break
    if not aborted:
        for e in engines:
            e.run_until_idle()
    records = cluster.collect(engines, reqs) if not aborted else []
    report = summary.summarize(records) if records else {"completed": 0}
    return PointResult(report, records, aborted, time.perf_counter() - started, routed, preds)


def p99_ttft(result: PointResult) -> float:
    """The search's objective: P99 TTFT, infinite for a run stopped as hopeless."""
    if result.aborted or not result.records:
        return float("inf")
    return float(result.summary["ttft"]["p99"])
