"""Token counting with the real Llama-3 tokenizer, and deterministic filler text.

Both services count prompts the same way, so the sidecar's twin sees the prompt the engine
twin computes: completions are the prompt's tokens plus the BOS token the engine prepends;
chat requests are rendered with the Llama-3 chat template (header tokens per message, the
assistant header at the end) and counted whole. Token-id prompts count as given.

Generated text is a fixed English passage cut into the tokenizer's own pieces, so the text
the twin streams re-tokenizes to about as many tokens as it claims.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from block.wire.openai import ChatCompletionRequest, ChatMessage, CompletionRequest

# Tokenizing costs ~0.3 µs a character on the caller's thread; longer texts go to a worker
# thread (encode_batch releases the GIL) so the event loop keeps streaming meanwhile.
OFFLOAD_CHARS = 8192

FILLER_PASSAGE = (
    " The river bends twice before it reaches the old mill, and the miller keeps a ledger of"
    " every boat that passes. In spring the water rises over the lower steps; in autumn the"
    " wheel turns slowly and the village brings its grain. Travellers ask about the bridge,"
    " which was rebuilt after a flood, and the miller tells them the stones came from the"
    " quarry on the hill. Children count the ducks, fishermen mend their nets on the bank, and"
    " in the evening the lamps of the inn are reflected in the still water."
)


class _Encoding(Protocol):
    ids: list[int]


class _Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = True) -> _Encoding: ...

    def encode_batch(
        self, texts: list[str], add_special_tokens: bool = True
    ) -> list[_Encoding]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


# Characters tokenized at a time for long texts (bounds the tokenizer's memory).
PIECE_CHARS = 1 << 16
# The longest token of the Llama-3 vocabulary, in characters (measured over its 128,256
# tokens): a text longer than this many characters per token of context cannot fit, whatever
# it says, so it is refused without tokenizing it.
LONGEST_TOKEN_CHARS = 128


class Tokens:
    """Counts prompt tokens and produces filler tokens; thread-safe (the tokenizer is)."""

    BOS = 1  # <|begin_of_text|>, prepended by the engine to every prompt
    END_OF_TURN = "<|eot_id|>"  # how a chat reply ends in the template (and in the engine)

    def __init__(self, tokenizer: _Tokenizer) -> None:
        self._tok = tokenizer
        self.bos_ids = tokenizer.encode("<|begin_of_text|>", add_special_tokens=False).ids
        ids = tokenizer.encode(FILLER_PASSAGE, add_special_tokens=False).ids
        self.filler_ids: list[int] = list(ids)
        self.filler: list[str] = [tokenizer.decode([i]) for i in ids]

    @classmethod
    def llama3(cls) -> Tokens:
        from block.simulator.workloads import llama3_tokenizer

        tok: _Tokenizer = llama3_tokenizer()  # type: ignore[assignment]
        return cls(tok)

    # ------------------------------------------------------------------ prompts
    @staticmethod
    def chat_text(messages: list[ChatMessage]) -> str:
        """The Llama-3 chat template, ending with the assistant's header."""
        parts = ["<|begin_of_text|>"]
        for m in messages:
            parts.append(f"<|start_header_id|>{m.role}<|end_header_id|>\n\n{m.text()}<|eot_id|>")
        parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
        return "".join(parts)

    def count_text(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    async def count_text_async(self, text: str, offload_chars: int = OFFLOAD_CHARS) -> int:
        """Counted on the loop when short, else in a worker thread (the loop runs meanwhile)."""
        if len(text) < offload_chars:
            return self.count_text(text)
        loop = asyncio.get_running_loop()
        enc = await loop.run_in_executor(
            None, lambda: self._tok.encode_batch([text], add_special_tokens=False)
        )
        return len(enc[0].ids)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    async def encode_async(self, text: str, offload_chars: int = OFFLOAD_CHARS) -> list[int]:
        """Token ids; on the loop when short, else in a worker thread, piece by piece."""
        if len(text) < offload_chars:
            return self.encode(text)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.encode_pieces, text)

    def encode_pieces(self, text: str, piece_chars: int = PIECE_CHARS) -> list[int]:
        """Token ids of a long text, tokenized a piece at a time: the tokenizer's working
        memory grows with its input (a 4 MB prompt took the sidecar from 0.2 to 1.4-2 GB, never
        given back), so it is bounded by the piece. Pieces end before a single space that
        follows a non-space, where Llama-3's pre-tokenizer splits anyway, so the ids are
        those of the whole text (a text with no such space is cut at the size)."""
        ids: list[int] = []
        start = 0
        while start < len(text):
            end = min(len(text), start + piece_chars)
            if end < len(text):
                cut = text.rfind(" ", start + piece_chars // 2, end)
                while cut > start and (text[cut - 1].isspace() or text[cut + 1 : cut + 2] == " "):
                    cut = text.rfind(" ", start + piece_chars // 2, cut)
                if cut > start:
                    end = cut
            ids += self._tok.encode(text[start:end], add_special_tokens=False).ids
            start = end
        return ids

    # Token ids of a prompt as the engine sees it (what prefix-cache hashes are made of). The
    # sidecar and the gateway both call these, so both hash identical ids.
    async def completion_prompt_ids(
        self, prompt: str | list[int], offload_chars: int = OFFLOAD_CHARS
    ) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        return self.bos_ids + await self.encode_async(prompt, offload_chars)

    async def chat_prompt_ids(
        self, messages: list[ChatMessage], offload_chars: int = OFFLOAD_CHARS
    ) -> list[int]:
        return await self.encode_async(self.chat_text(messages), offload_chars)

    async def request_prompt_ids(
        self, req: CompletionRequest | ChatCompletionRequest, offload_chars: int = OFFLOAD_CHARS
    ) -> list[int] | None:
        """The prompt's ids of a one-prompt request; None for a batch of prompts."""
        if isinstance(req, ChatCompletionRequest):
            return await self.chat_prompt_ids(req.messages, offload_chars)
        prompts = req.prompts
        if len(prompts) != 1:
            return None
        return await self.completion_prompt_ids(prompts[0], offload_chars)

    async def completion_prompt(
        self, prompt: str | list[int], offload_chars: int = OFFLOAD_CHARS
    ) -> int:
        if isinstance(prompt, list):
            return len(prompt)
        return self.BOS + await self.count_text_async(prompt, offload_chars)

    async def chat_prompt(
        self, messages: list[ChatMessage], offload_chars: int = OFFLOAD_CHARS
    ) -> int:
        return await self.count_text_async(self.chat_text(messages), offload_chars)

    # ------------------------------------------------------------------ output
    def piece(self, index: int) -> str:
        """Text of the response's `index`-th token."""
        return self.filler[index % len(self.filler)]

    def ids(self, start: int, count: int) -> list[int]:
        """Token ids of the response's tokens `start` .. `start + count`."""
        f = self.filler_ids
        return [f[i % len(f)] for i in range(start, start + count)]

    def text(self, start: int, count: int) -> str:
        return "".join(self.piece(i) for i in range(start, start + count))
