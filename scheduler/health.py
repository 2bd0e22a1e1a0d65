"""Active health probe: every few seconds, GET each replica's `/readyz`.

A sidecar answers 503 there when its engine is down, so such a replica stops getting new
requests within one interval even if no request has failed on it yet. 404 counts as healthy
(a plain OpenAI server without `/readyz` used as a replica). Discovery readiness (Kubernetes)
and passive failure backoff (proxying) work alongside; a replica must pass all three.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from block.scheduler.replicas import Replica, ReplicaSet

logger = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 1.0


async def probe(session: aiohttp.ClientSession, replica: Replica) -> bool:
    try:
        async with session.get(
            replica.url + "/readyz", timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        ) as resp:
            await resp.read()
            return resp.status == 200 or resp.status == 404
    except (aiohttp.ClientError, TimeoutError):
        return False


async def probe_all(session: aiohttp.ClientSession, replicas: ReplicaSet) -> None:
    current = replicas.all()
    results = await asyncio.gather(*(probe(session, r) for r in current))
    for r, ok in zip(current, results, strict=True):
        if ok != r.probe_ok:
            logger.info("replica %s is %s", r.name, "healthy again" if ok else "not ready")
        r.probe_ok = ok


async def probe_forever(
    session: aiohttp.ClientSession, replicas: ReplicaSet, interval_s: float
) -> None:
    while True:
        await probe_all(session, replicas)
        await asyncio.sleep(interval_s)
