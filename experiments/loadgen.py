"""The open-loop load generator behind `block bench`: replay a plan against an OpenAI endpoint.

Every planned request is sent at its time whether or not earlier ones have finished (open
loop: a slow server faces the same offered load, as real users would give it). Each request
is a streaming `/v1/completions` call; at the client we time the first token (TTFT), the gaps
between token-bearing chunks (inter-token latency) and the end (e2e). Output tokens are the
server's `usage.completion_tokens` when it reports usage, else the number of text chunks.
A stop (Ctrl-C or `stop` event) stops sending at once and gives in-flight requests a short grace
before cancelling them; what finished is still written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import numpy as np

from block.experiments.plans import PlannedRequest
from block.simulator.summary import stats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    url: str  # base URL, e.g. http://127.0.0.1:8080
    model: str | None = None  # None: the first model the endpoint lists at /v1/models
    timeout_s: float = 600.0  # per request, connect to last byte
    ignore_eos: bool = True  # vLLM extension: generate exactly max_tokens
    api_key: str | None = None
    grace_s: float = 5.0  # how long in-flight requests may finish after a stop


@dataclass
class Result:
    """One request as the client saw it (seconds; relative to the run's start)."""

    rid: int
    send_s: float
    prompt_tokens: int
    max_tokens: int
    ok: bool = False
    status: int = 0
    error: str = ""
    ttft_s: float = float("nan")
    e2e_s: float = float("nan")
    output_tokens: int = 0
    itl_s: list[float] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        itl = d.pop("itl_s")
        d["itl_mean_s"] = float(np.mean(itl)) if itl else float("nan")
        d["itl_max_s"] = float(np.max(itl)) if itl else float("nan")
        d["tpot_s"] = self.tpot_s
        return d

    @property
    def tpot_s(self) -> float:
        if self.output_tokens <= 1 or not self.ok:
            return float("nan")
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


async def resolve_model(session: aiohttp.ClientSession, cfg: BenchConfig) -> str:
    """The model to ask for: the configured one, else the first the endpoint lists."""
    if cfg.model:
        return cfg.model
    try:
        async with session.get(cfg.url.rstrip("/") + "/v1/models") as resp:
            if resp.status == 200:
                data = (await resp.json()).get("data") or []
                if data and isinstance(data[0].get("id"), str):
                    return str(data[0]["id"])
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        logger.warning("cannot list models at %s: %s", cfg.url, e)
    return "default"


async def send_one(
    session: aiohttp.ClientSession,
    cfg: BenchConfig,
    req: PlannedRequest,
    t0: float,
    model: str = "default",
) -> Result:
    """Send one streaming completion and time it."""
    res = Result(req.rid, time.perf_counter() - t0, req.prompt_tokens, req.max_tokens)
    body: dict[str, Any] = {
        "model": model,
        "prompt": req.prompt,
        "max_tokens": req.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if cfg.ignore_eos:
        body["ignore_eos"] = True
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    start = time.perf_counter()
    last = start
    chunks = 0
    usage_tokens: int | None = None
    try:
        async with session.post(
            cfg.url.rstrip("/") + "/v1/completions", json=body, headers=headers
        ) as resp:
            res.status = resp.status
            if resp.status != 200:
                res.error = (await resp.text())[:300]
                return res
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    continue  # read to the end so the connection closes cleanly / is reused
                chunk = json.loads(data)
                if chunk.get("error"):
                    res.error = str(chunk["error"])[:300]
                    return res
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    usage_tokens = int(usage["completion_tokens"])
                if not any(c.get("text") for c in chunk.get("choices") or []):
                    continue
                now = time.perf_counter()
                if chunks == 0:
                    res.ttft_s = now - start
                else:
                    res.itl_s.append(now - last)
                last = now
                chunks += 1
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError, ValueError) as e:
        res.error = f"{type(e).__name__}: {e}"[:300]
        return res
    res.e2e_s = time.perf_counter() - start
    res.output_tokens = usage_tokens if usage_tokens is not None else chunks
    res.ok = chunks > 0 or res.output_tokens == 0
    if chunks == 0:
        res.ttft_s = res.e2e_s
    return res


async def run_plan(
    cfg: BenchConfig,
    plan: Sequence[PlannedRequest],
    stop: asyncio.Event | None = None,
    on_done: Callable[[Result], None] | None = None,
) -> tuple[list[Result], float, bool]:
    """Send `plan` open-loop. Returns (results in send order, wall seconds, stopped early)."""
    stop = stop or asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=cfg.timeout_s, sock_connect=10)
    # No connection cap: an open-loop client must not queue requests on its own side.
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    tasks: list[asyncio.Task[Result]] = []
    stopped = False
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        model = await resolve_model(session, cfg)
        t0 = time.perf_counter()
        for req in plan:
            delay = req.send_s - (time.perf_counter() - t0)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                stopped = True
                break
            task = asyncio.create_task(send_one(session, cfg, req, t0, model))
            if on_done is not None:
                task.add_done_callback(_reporter(on_done))
            tasks.append(task)
        if tasks:
            pending = {t for t in tasks if not t.done()}
            while pending and not stop.is_set():
                waiter = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait(pending | {waiter}, return_when="FIRST_COMPLETED")
                waiter.cancel()
                pending -= done
            if pending:
                stopped = True
                _, pending = await asyncio.wait(pending, timeout=cfg.grace_s)
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - t0
    results = [t.result() for t in tasks if not t.cancelled() and t.exception() is None]
    return results, wall, stopped


def _reporter(on_done: Callable[[Result], None]) -> Callable[[asyncio.Task[Result]], None]:
    def report(task: asyncio.Task[Result]) -> None:
        if not task.cancelled() and task.exception() is None:
            on_done(task.result())

    return report


def summarize(results: Sequence[Result], wall_s: float) -> dict[str, Any]:
    """The keys of `block simulate`'s summary, as measured at the client.

    `queue` is null: a client cannot see how long a request waited inside the server. `itl`
    (inter-token latency, every gap) and `failed` are extra.
    """
    ok = [r for r in results if r.ok]
    if ok:
        start = min(r.send_s for r in ok)
        end = max(r.send_s + r.e2e_s for r in ok)
        span = max(end - start, 1e-9)
    else:
        span = max(wall_s, 1e-9)
    itl = [g for r in ok for g in r.itl_s]
    return {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "ttft": stats([r.ttft_s for r in ok]),
        "tpot": stats([r.tpot_s for r in ok if r.output_tokens > 1]),
        "e2e": stats([r.e2e_s for r in ok]),
        "queue": None,
        "itl": stats(itl),
        "throughput_rps": len(ok) / span,
        "output_tokens_per_s": sum(r.output_tokens for r in ok) / span,
        "duration_s": span,
        "wall_s": wall_s,
    }
