"""`block profile engine`: profile a running OpenAI-compatible engine from outside.

No GPU-side tooling and no hook inside the engine: it sends controlled work through the API and
times the engine's steps from the streamed tokens (`block.simulator.observed_steps`).

- Decode probes: `b` streams with prompts of `L` random token ids start together and generate
  with `ignore_eos`; once their prefills are done every step is a decode of `b` sequences over
  a known KV, for a grid of batch sizes and prompt lengths.
- Prefill probes: beside a few long background streams (so the engine never idles), one request
  of a given prompt length and two output tokens: its first token's step is a decode of the
  background plus that prefill.

Random token ids make every prompt unique, so the engine's prefix cache never hits. Every clean
step is an observation of `block.simulator.calibration`'s step model (no profile: the linear
terms alone); a share of the probe configurations is held back to measure the fit's error on
steps it never saw, then the model is refitted on everything and written as Vidur-format tables
(`block.profiler.engine_tables`) with `overhead.json` and `meta.json`.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from block.errors import ConfigError, UpstreamError
from block.profiler import engine_tables, tables
from block.simulator.calibration import FEATURES, Coefficients, features, fit
from block.simulator.models import ModelShape
from block.simulator.observed_steps import ObservedStep, StepObserver

logger = logging.getLogger(__name__)

NO_PROFILE = (0.0,) * 7  # prior: no profile, no cost


@dataclass(frozen=True)
class EngineProfileRequest:
    url: str
    out_dir: Path
    shape: ModelShape
    model: str | None = None  # the name the engine serves (default: its first model)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    prompt_lengths: tuple[int, ...] = (32, 512, 1536)
    prefill_lengths: tuple[int, ...] = (16, 64, 128, 256, 512, 1024, 1536)
    background: tuple[int, ...] = (1, 4)
    decode_tokens: int = 24
    max_num_batched_tokens: int | None = None  # default: the engine's 2048-token budget
    hold_out: float = 0.2
    seed: int = 0
    api_key: str | None = None
    timeout_s: float = 300.0
    # Sampling changes a step's cost (vLLM's CPU build: greedy decoding saves about 0.8 ms per
    # sequence against temperature 1 over a 128k vocabulary), so probes sample as the traffic
    # will: None leaves the engine's default.
    temperature: float | None = None


@dataclass
class _Stream:
    """One probe request in flight (an `InFlight` of the step observer)."""

    rid: int
    prompt_tokens: int
    arrival_s: float  # when it was sent
    streamed: int = 0
    streaming: bool = True
    cached_tokens: int = 0  # random token ids: the prefix cache never hits


@dataclass
class _Probe:
    """Requests sent together; their steps are observed together."""

    label: str
    kind: str  # decode or prefill
    steps: list[ObservedStep] = field(default_factory=list)


@dataclass(frozen=True)
class EngineProfile:
    coefficients: Coefficients
    fit_error: float
    held_out_error: float | None  # median over held-back probes of |predicted / measured - 1|
    held_out_max: float | None  # the largest of them
    steps: int
    probes: int
    seconds: float
    out_dir: Path


class _Client:
    """Streams completions and hands every token to the step observer."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        req: EngineProfileRequest,
        model: str,
        observer: StepObserver,
    ) -> None:
        self.session = session
        self.req = req
        self.model = model
        self.observer = observer
        self.flight: dict[int, _Stream] = {}
        self.next_rid = 0
        self.probe: _Probe | None = None
        self.rng = random.Random(req.seed)
        self.clock = time.monotonic

    def prompt(self, tokens: int) -> list[int]:
        # Ordinary vocabulary ids (past the first thousand: no special or control tokens).
        return [self.rng.randrange(1000, 100_000) for _ in range(tokens)]

    def _seen(self) -> dict[int, _Stream]:
        return self.flight

    async def stream(self, prompt_tokens: int, max_tokens: int) -> int:
        """One streamed request; returns the tokens it produced."""
        rid = self.next_rid
        self.next_rid += 1
        body = {
            "model": self.model,
            "prompt": self.prompt(prompt_tokens),
            "max_tokens": max_tokens,
            "min_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        if self.req.temperature is not None:
            body["temperature"] = self.req.temperature
        headers = {"Authorization": f"Bearer {self.req.api_key}"} if self.req.api_key else {}
        s = _Stream(rid, prompt_tokens, self.clock())
        self.flight[rid] = s
        try:
            async with self.session.post(
                self.req.url + "/v1/completions", json=body, headers=headers
            ) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:300]
                    raise UpstreamError(f"the engine answered {resp.status}: {text}")
                buf = b""
                async for data in resp.content.iter_any():
                    now = self.clock()
                    buf += data
                    *events, buf = buf.split(b"\n\n")
                    produced = sum(_tokens(e, s.streamed) for e in events)
                    if produced:
                        self._token(s, now, produced)
        finally:
            self.flight.pop(rid, None)
        return s.streamed

    def _token(self, s: _Stream, now: float, count: int) -> None:
        step = self.observer.token(s.rid, now, count, s, self._seen)
        s.streamed += count
        if step is not None and self.probe is not None:
            self.probe.steps.append(step)


def _tokens(event: bytes, streamed: int) -> int:
    """Tokens an SSE event carries: by the running usage count where the engine sends one
    (vLLM's continuous_usage_stats), else one per choice."""
    if not event.startswith(b"data:"):
        return 0
    payload = event[5:].strip()
    if payload == b"[DONE]":
        return 0
    try:
        obj = json.loads(payload)
    except ValueError:
        return 0
    if not isinstance(obj, dict) or not obj.get("choices"):
        return 0
    usage = obj.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return max(0, int(usage["completion_tokens"]) - streamed)
    return len(obj["choices"])


async def _engine_facts(
    session: aiohttp.ClientSession, url: str, model: str | None
) -> tuple[str, dict[str, str]]:
    """The served model's name and vLLM's cache_config_info labels (if exposed)."""
    try:
        async with session.get(url + "/v1/models") as r:
            models = await r.json(content_type=None)
        names = [m["id"] for m in models.get("data", [])]
        async with session.get(url + "/metrics") as r:
            metrics = await r.text() if r.status == 200 else ""
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, AttributeError) as e:
        raise UpstreamError(f"cannot read the engine at {url}: {type(e).__name__}: {e}") from e
    if not names:
        raise UpstreamError(f"the engine at {url} lists no model at /v1/models")
    if model is not None and model not in names:
        raise ConfigError(f"the engine serves {names}, not {model!r}")
    info: dict[str, str] = {}
    try:
        for family in text_string_to_metric_families(metrics):
            if family.name == "vllm:cache_config_info" and family.samples:
                info = dict(family.samples[0].labels)
    except ValueError:  # not Prometheus text: profile without the engine's cache facts
        logger.warning("cannot parse %s/metrics; assuming blocks of 16 tokens", url)
    return model or names[0], info


async def _run(
    req: EngineProfileRequest, progress: Callable[[str, int, int], None]
) -> EngineProfile:
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=req.timeout_s, sock_connect=5.0)
    # A connection per request: between probes the engine may close an idle keep-alive
    # connection just as it is reused ("Server disconnected"); on loopback a connect is cheap.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        model, cache = await _engine_facts(session, req.url, req.model)
        budget = req.max_num_batched_tokens or 2048
        block_size = int(cache.get("block_size") or 16)
        kv_tokens = int(cache.get("num_gpu_blocks") or 0) * block_size or None
        max_len = req.shape.max_model_len
        observer = StepObserver(budget)
        client = _Client(session, req, model, observer)
        plan = _plan(req, budget, max_len, kv_tokens)
        probes: list[_Probe] = []
        for i, (label, kind, run) in enumerate(plan):
            progress(label, i, len(plan))
            probe = _Probe(label, kind)
            client.probe = probe
            await run(client)
            client.probe = None
            probes.append(probe)
            await asyncio.sleep(0.05)  # an idle gap: the next probe's first burst starts fresh
        progress("fitting", len(plan), len(plan))
    steps = [s for p in probes for s in p.steps]
    if len(steps) < 20:
        raise UpstreamError(
            f"only {len(steps)} clean steps observed (skipped: {observer.counts.skipped}): does "
            "the engine stream one event per token?"
        )
    held_err, held_max = _held_out(probes, req)
    coefs, fit_error = _fit(steps)
    _write(req, coefs, fit_error, held_err, held_max, steps, probes, block_size, budget, model)
    return EngineProfile(
        coefs, fit_error, held_err, held_max, len(steps), len(probes),
        time.monotonic() - started, req.out_dir,
    )  # fmt: skip


def _plan(
    req: EngineProfileRequest, budget: int, max_len: int, kv_tokens: int | None
) -> list[tuple[str, str, Callable[[_Client], Awaitable[object]]]]:
    plan: list[tuple[str, str, Callable[[_Client], Awaitable[object]]]] = []
    n = req.decode_tokens
    for length in req.prompt_lengths:
        if length + n > max_len:
            continue
        for b in req.batch_sizes:
            if kv_tokens is not None and b * (length + n) > kv_tokens * 0.9:
                continue

            async def decode(c: _Client, b: int = b, length: int = length) -> object:
                return await asyncio.gather(*(c.stream(length, n) for _ in range(b)))

            plan.append((f"decode {b} x {length} tokens", "decode", decode))
    for bg in req.background:
        chunks = [p for p in req.prefill_lengths if p + bg <= budget and p + 2 <= max_len]
        if not chunks:
            continue

        async def prefill(c: _Client, bg: int = bg, chunks: Sequence[int] = chunks) -> object:
            # Background streams long enough to cover every probe.
            stop = asyncio.Event()

            async def background() -> None:
                while not stop.is_set():
                    await c.stream(32, 48)

            tasks = [asyncio.create_task(background()) for _ in range(bg)]
            await asyncio.sleep(0.3)
            for p in chunks:
                for _ in range(3):
                    await c.stream(p, 2)
            stop.set()
            await asyncio.gather(*tasks)
            return None

        plan.append((f"prefill beside {bg} decodes", "prefill", prefill))
    return plan


def _rows(steps: Sequence[ObservedStep]) -> tuple[np.ndarray, np.ndarray]:
    rows = np.array([features(s.shape, 0.0) for s in steps])
    return rows, np.array([s.seconds for s in steps])


def _fit(steps: Sequence[ObservedStep]) -> tuple[Coefficients, float]:
    rows, seconds = _rows(steps)
    return fit(rows, seconds, prior=NO_PROFILE, ridge=1e-4)


def _held_out(
    probes: Sequence[_Probe], req: EngineProfileRequest
) -> tuple[float | None, float | None]:
    """Fit without a share of the decode probes, then predict them: for each held-back probe
    (a batch size and KV length the fit never saw), the median measured step against the
    median predicted one, as a profile's table point is a median of repeats. Returns the median
    and the largest of those errors."""
    rng = random.Random(req.seed + 1)
    decode = [p for p in probes if p.kind == "decode" and p.steps]
    if len(decode) < 5:
        return None, None
    rng.shuffle(decode)
    k = max(1, round(len(decode) * req.hold_out))
    held = {id(p) for p in decode[:k]}
    train = [s for p in probes if id(p) not in held for s in p.steps]
    test = [s for p in probes if id(p) in held for s in p.steps]
    if len(train) < 20 or not test:
        return None, None
    coefs, _ = _fit(train)
    errors = []
    for p in decode[:k]:
        rows, seconds = _rows(p.steps)
        predicted = rows @ np.array(coefs.as_tuple())
        errors.append(abs(float(np.median(predicted)) / float(np.median(seconds)) - 1.0))
    return float(np.median(errors)), float(max(errors))


def _write(
    req: EngineProfileRequest,
    coefs: Coefficients,
    fit_error: float,
    held_err: float | None,
    held_max: float | None,
    steps: Sequence[ObservedStep],
    probes: Sequence[_Probe],
    block_size: int,
    budget: int,
    model: str,
) -> None:
    out = req.out_dir
    shape = req.shape
    max_batch = max(max(req.batch_sizes), max(req.background) + 1)
    tables.write_mlp_csv(out / "mlp.csv", engine_tables.mlp_rows(shape, coefs, max(budget, 4096)))
    tables.write_attention_csv(
        out / "attention.csv",
        engine_tables.attention_rows(shape, coefs, block_size, max_batch, budget),
    )
    # Every observation, for plots and for refits by other means.
    with (out / "steps.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["probe", "seconds", "num_decode", "decode_kv_total", "prefill_tokens",
                    "prefill_pairs", "fitted_seconds"])  # fmt: skip
        for p in probes:
            for s in p.steps:
                fitted = coefs.predict(features(s.shape, 0.0))
                w.writerow([p.label, f"{s.seconds:.6f}", s.shape.num_decode,
                            s.shape.decode_kv_total, s.shape.num_tokens - s.shape.num_decode,
                            f"{s.shape.prefill_pairs:.0f}", f"{fitted:.6f}"])  # fmt: skip
    (out / "overhead.json").write_text(json.dumps(engine_tables.overheads(coefs), indent=2) + "\n")
    tables.write_meta(
        out / "meta.json",
        {
            "profiler": "block profile engine (black box, streamed tokens)",
            "engine_url": req.url,
            "served_model": model,
            "model": {
                "name": shape.name,
                "num_layers": shape.num_layers,
                "hidden_size": shape.hidden_size,
                "max_model_len": shape.max_model_len,
            },
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "coefficients": dict(zip(FEATURES, coefs.as_tuple(), strict=True)),
            "fit_error_median": fit_error,
            "held_out_error_median": held_err,
            "held_out_error_max": held_max,
            "clean_steps": len(steps),
            "probes": [{"label": p.label, "steps": len(p.steps)} for p in probes],
            "block_size": block_size,
            "max_num_batched_tokens": budget,
        },
    )


def run(
    req: EngineProfileRequest, progress: Callable[[str, int, int], None] | None = None
) -> EngineProfile:
    req.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(_run(req, progress or (lambda label, i, n: None)))
    except (aiohttp.ClientError, TimeoutError) as e:
        raise UpstreamError(
            f"the engine at {req.url} failed during profiling: {type(e).__name__}: {e}"
        ) from e
