"""Long prompts are tokenized a piece at a time (bounded memory) into the same ids."""

from __future__ import annotations

import random

from block.predictor.tokens import Tokens


def test_pieces_give_the_whole_texts_ids() -> None:
    tokens = Tokens.llama3()
    rng = random.Random(7)
    words = ["hello", "world,", "the", "a", "fox.", "\n", "  ", "x" * 40, "日本語", "don't", "\t"]
    for n in (10, 2_000, 20_000):
        text = " ".join(rng.choice(words) for _ in range(n))
        assert tokens.encode_pieces(text, piece_chars=1024) == tokens.encode(text)
    # No space to cut at: pieces of the given size (the count stays close).
    solid = "y" * 10_000
    assert abs(len(tokens.encode_pieces(solid, 1024)) - len(tokens.encode(solid))) <= 10
