"""A cluster of replicas behind a global policy: the offline twin of a Block deployment."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from block.simulator.policies import Policy, ReplicaView, RouteRequest
from block.simulator.prediction import Prediction, predict_one_more
from block.simulator.replica import Replica
from block.simulator.requests import Request, RequestRecord
from block.simulator.router_memory import RoutedFigures, SimulatedMemory

# Maps a request to the output length the router believes (oracle: the true length).
LengthGuess = Callable[[Request], int]


def oracle_lengths(req: Request) -> int:
    return req.output_tokens


def view_of(
    replica: Replica,
    index: int,
    prediction: Prediction | None = None,
    prefix_hit_tokens: int = 0,
    routed: RoutedFigures | None = None,
) -> ReplicaView:
    view = ReplicaView(
        index=index,
        num_running=replica.num_running,
        num_waiting=replica.num_waiting,
        kv_used_blocks=replica.used_blocks,
        kv_total_blocks=replica.num_blocks,
        waiting_prefill_tokens=replica.waiting_prefill_tokens(),
        block_size=replica.config.block_size,
        prediction=prediction,
        prefix_hit_tokens=prefix_hit_tokens,
    )
    if routed is None:  # policies without router memory: the view as it always was
        return view
    return dataclasses.replace(
        view,
        routed_prefix_tokens=routed.prefix_tokens,
        routed_prefill_tokens=routed.prefill_tokens,
        routed_active_blocks=routed.active_blocks,
        routed_shared_blocks=routed.shared_blocks,
    )


def router_memory(policy: Policy, replicas: Sequence[Replica]) -> SimulatedMemory | None:
    """The router-side memory the policy reads, if any (kept only then: it costs time)."""
    cfg = policy.prefix_index
    return None if cfg is None else SimulatedMemory(cfg, replicas)


@dataclass
class ClusterResult:
    records: list[RequestRecord]
    replicas: list[Replica]
    routed: list[int]  # requests sent to each replica


def simulate_cluster(
    replicas: Sequence[Replica],
    policy: Policy,
    requests: Sequence[Request],
    seed: int = 0,
    guess: LengthGuess = oracle_lengths,
    progress: Callable[[int], None] | None = None,
) -> ClusterResult:
    """Route every request (in arrival order) and run all replicas to completion."""
    rng = random.Random(seed)
    routed = [0] * len(replicas)
    memory = router_memory(policy, replicas)
    for i, req in enumerate(requests):
        now = req.arrival_s
        for r in replicas:
            r.advance_to(now)
        cand = policy.candidates(len(replicas), rng)
        route = RouteRequest(req.prompt_tokens, guess(req))
        remembered = None
        if memory is not None:
            memory.catch_up()
            remembered = memory.figures(cand, req, now)
        views = []
        for j, idx in enumerate(cand):
            p = None
            if policy.needs_prediction:
                p = predict_one_more(replicas[idx], req.prompt_tokens, route.output_tokens, now)
            mine = None if remembered is None else remembered[j]
            views.append(view_of(replicas[idx], idx, p, routed=mine))
        choice = policy.choose(route, views, rng)
        replicas[choice].submit(req, now)
        if memory is not None:
            memory.dispatched(choice, req, now)
        routed[choice] += 1
        if progress is not None and i % 256 == 0:
            progress(i)
    for r in replicas:
        r.run_until_idle()
    if progress is not None:
        progress(len(requests))
    return ClusterResult(collect(replicas, requests), list(replicas), routed)


def collect(replicas: Sequence[Replica], requests: Sequence[Request]) -> list[RequestRecord]:
    by_rid: dict[int, tuple[int, Replica]] = {}
    for idx, r in enumerate(replicas):
        for rid in r.recorder.finished:
            by_rid[rid] = (idx, r)
    out = []
    for req in requests:
        found = by_rid.get(req.rid)
        if found is None:
            continue
        idx, r = found
        rec = r.recorder
        out.append(
            RequestRecord(
                rid=req.rid,
                replica=idx,
                arrival_s=req.arrival_s,
                scheduled_s=rec.scheduled[req.rid],
                first_token_s=rec.first_token[req.rid],
                finished_s=rec.finished[req.rid],
                prompt_tokens=req.prompt_tokens,
                output_tokens=req.output_tokens,
                preemptions=rec.preemptions.get(req.rid, 0),
                cached_tokens=rec.cached_tokens.get(req.rid, 0),
            )
        )
    return out
