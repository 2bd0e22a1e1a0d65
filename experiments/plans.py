"""What a load-generator run sends and when: a plan of timed requests built from a workload.

Prompts are real ShareGPT text (held-out first turns; `max_tokens` is the length of the reply
they really got) or, for workloads that carry only sizes (the Azure and arXiv traces, any CSV
trace), synthetic prompts of the trace's prompt length: a cycle of common English words that
the Llama-3 tokenizer reads as one token each, so the prompt token count is close to the trace's.
Send times follow Poisson/Gamma arrivals at a QPS, or the trace's own timestamps divided by a
time scale.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from block.errors import ConfigError
from block.simulator import workloads

# Words that are one Llama-3 token each after a space (checked by tests/unit/experiments).
FILLER_WORDS = ("the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "on")
WORKLOADS = ("sharegpt", "azure-conv", "arxiv")
DEFAULT_MAX_MODEL_LEN = 4096


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    rid: int
    send_s: float  # seconds after the run starts
    prompt: str
    prompt_tokens: int  # what the workload says (the server may count differently)
    max_tokens: int


def synthetic_prompt(tokens: int) -> str:
    """Filler text that a Llama-3 server reads as `tokens` tokens: one per word, plus its BOS."""
    n = max(1, tokens - 1)
    return " ".join(FILLER_WORDS[i % len(FILLER_WORDS)] for i in range(n))


def plan(
    workload: str,
    requests: int,
    qps: float | None,
    seed: int,
    cv: float = 1.0,
    trace: Path | None = None,
    time_scale: float = 1.0,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    max_tokens_cap: int | None = None,
) -> list[PlannedRequest]:
    """The requests of a run, in send order."""
    if requests <= 0:
        raise ConfigError("--requests must be positive")
    if max_tokens_cap is not None and max_tokens_cap <= 0:
        raise ConfigError("--max-tokens-cap must be positive")
    sizes: list[tuple[str | None, int, int]]  # (text, prompt tokens, output tokens)
    if trace is not None or workload in ("azure-conv", "arxiv"):
        pairs: list[tuple[int, int]]
        times: list[float] | None
        if trace is None and workload == "arxiv":
            pairs = [(int(p), int(o)) for p, o in workloads.arxiv_lengths().tolist()]
            times = None
        else:
            path = trace or workloads.trace_path(workloads.AZURE_CONV)
            tr = workloads.read_trace(path)
            pairs = list(zip(tr.prompt_tokens.tolist(), tr.output_tokens.tolist(), strict=True))
            times = tr.arrival_s.tolist()
        rng = random.Random(seed)
        if times is None or qps is not None:  # sizes only: draw them, arrivals from qps
            picks = [rng.randrange(len(pairs)) for _ in range(requests)]
            times = None
        else:
            picks = list(range(min(requests, len(pairs))))
        sizes = [(None, int(pairs[i][0]), int(pairs[i][1])) for i in picks]
        trace_times = None if times is None else [times[i] / time_scale for i in picks]
    elif workload == "sharegpt":
        from block.experiments import workload as wl

        pool = wl.load_pool(max_model_len, "prompt-median").conversations
        rng = random.Random(seed)
        sizes = []
        for _ in range(requests):
            c = pool[rng.randrange(len(pool))]
            sizes.append((c.prompt, c.prompt_tokens, c.output_tokens))
        trace_times = None
    else:
        raise ConfigError(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}")
    if time_scale <= 0:
        raise ConfigError("--time-scale must be positive")
    if trace_times is None:
        if qps is None:
            raise ConfigError("--qps is needed unless a trace's own timestamps are replayed")
        trace_times = workloads.arrivals(len(sizes), qps, random.Random(seed + 1), cv)
        start = 0.0
    else:
        start = trace_times[0] if trace_times else 0.0
    out = []
    for rid, ((text, p, o), t) in enumerate(zip(sizes, trace_times, strict=True)):
        fitted = workloads.fit_lengths(p, o, max_model_len - 1)  # the server adds a BOS
        if fitted is None:
            continue
        p, o = fitted
        if max_tokens_cap is not None:
            o = min(o, max_tokens_cap)
        out.append(PlannedRequest(rid, t - start, text or synthetic_prompt(p), p, o))
    return out
