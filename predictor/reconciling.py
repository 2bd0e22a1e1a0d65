"""Reconciling the live twin with the engine's own `/metrics` on an interval.

The sidecar's twin knows only what passed through the sidecar; the engine's gauges
(`vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`) are the
ground truth for its load. Each scrape compares the two and exposes the drift (engine minus
twin) in the sidecar's /metrics and /v1/state; persistent drift is logged. A scrape also tells
whether the engine is up (`/readyz`) and, through `vllm:cache_config_info`, its KV blocks.

Only the few lines needed are read: a vLLM metrics page is large, and parsing all of it on the
event loop would delay the requests being proxied.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import aiohttp

logger = logging.getLogger(__name__)

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_CACHE_INFO = "vllm:cache_config_info"
_WANTED = frozenset((_RUNNING, _WAITING, _CACHE_INFO, *_KV))
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class EngineFigures:
    """The engine's load as its /metrics reported it."""

    num_running: float
    num_waiting: float
    kv_used_ratio: float | None
    num_blocks: int | None  # from vllm:cache_config_info, when exposed
    block_size: int | None
    prefix_caching: bool | None = None


def parse_vllm_metrics(text: str) -> EngineFigures:
    """Sum the load gauges over their label sets (one engine may report per model/engine)."""
    running = waiting = 0.0
    kv: dict[str, list[float]] = {}
    num_blocks: int | None = None
    block_size: int | None = None
    prefix_caching: bool | None = None
    seen = False
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        brace, space = line.find("{"), line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            close = line.rfind("}")
            name, labels, rest = line[:brace], line[brace + 1 : close], line[close + 1 :]
        elif space != -1:
            name, labels, rest = line[:space], "", line[space:]
        else:
            continue
        if name not in _WANTED:
            continue
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        if name == _RUNNING:
            running += value
            seen = True
        elif name == _WAITING:
            waiting += value
            seen = True
        elif name == _CACHE_INFO:
            found = dict(_LABEL.findall(labels))
            num_blocks = _int(found.get("num_gpu_blocks"))
            block_size = _int(found.get("block_size"))
            caching = found.get("enable_prefix_caching")
            if caching in ("True", "False"):
                prefix_caching = caching == "True"
        else:
            kv.setdefault(name, []).append(value)
    if not seen:
        raise ValueError("no vllm:num_requests_running/waiting in the engine's /metrics")
    # vLLM v1 names it kv_cache_usage_perc, v0 gpu_cache_usage_perc; either is a 0-1 ratio.
    ratios = next((kv[n] for n in _KV if n in kv), None)
    kv_ratio = None if not ratios else sum(ratios) / len(ratios)
    return EngineFigures(running, waiting, kv_ratio, num_blocks, block_size, prefix_caching)


def _int(s: str | None) -> int | None:
    if s is None or s in ("", "None"):
        return None
    try:
        return int(s)
    except ValueError:
        return None


class Scraper:
    """Scrapes the engine's /metrics; remembers the last result and whether the engine is up."""

    def __init__(self, session: aiohttp.ClientSession, engine_url: str, timeout_s: float) -> None:
        self._session = session
        self._url = engine_url + "/metrics"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.last: EngineFigures | None = None
        self.up = False
        self.last_error: str | None = "not scraped yet"

    async def scrape(self) -> EngineFigures | None:
        try:
            async with self._session.get(self._url, timeout=self._timeout) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                text = await resp.text()
            figures = parse_vllm_metrics(text)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            if self.up or self.last_error is None:
                logger.warning("engine metrics at %s failed: %s", self._url, _short(e))
            self.up = False
            self.last_error = f"{type(e).__name__}: {_short(e)}"
            return None
        if not self.up:
            logger.info("engine at %s is up", self._url)
        self.up = True
        self.last_error = None
        self.last = figures
        return figures


def _short(e: BaseException) -> str:
    return str(e) or type(e).__name__
