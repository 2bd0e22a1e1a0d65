"""The slice of the OpenAI API that Block serves and proxies: completions, chat, models.

Requests accept unknown fields (the OpenAI API and vLLM's extensions have many, and a proxy must
pass them through untouched); the fields Block reads are validated, so a bad value is a clear
400, not a traceback. Responses and SSE chunks are the shapes vLLM and OpenAI send.

    POST /v1/completions       CompletionRequest     → CompletionResponse | SSE CompletionChunk
    POST /v1/chat/completions  ChatCompletionRequest → ChatCompletionResponse
                                                       | SSE ChatCompletionChunk
    GET  /v1/models                                  → ModelList

A stream is `data: <chunk JSON>\\n\\n` events ending with `data: [DONE]\\n\\n`; with
`stream_options.include_usage` the last chunk before `[DONE]` has empty `choices` and the usage.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_TOKENS_LIMIT = 1_048_576  # larger than any context window; beyond it a value is a mistake
SSE_DONE = b"data: [DONE]\n\n"
OUTPUT_TOKENS_HEADER = "x-block-output-tokens"  # the gateway's response-length estimate


class OpenAIModel(BaseModel):
    """Base of OpenAI bodies: unknown fields are kept (and passed on by proxies)."""

    model_config = ConfigDict(extra="allow")


TokenLimit = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]


class OpenAIRequestModel(OpenAIModel):
    """Base of request bodies: the fields Block reads take their JSON type only, as OpenAI and
    vLLM answer (`"stream": "yes"`, `"max_tokens": "5"` or `true` are 400s, not coerced)."""

    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(OpenAIRequestModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM: usage on every chunk


class _SamplingFields(OpenAIRequestModel):
    """Fields shared by completions and chat that Block reads or checks."""

    model: Annotated[str, Field(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    ignore_eos: bool = False  # vLLM extension: generate exactly max_tokens tokens
    min_tokens: Annotated[int, Field(ge=0, le=MAX_TOKENS_LIMIT)] = 0  # vLLM extension

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def _check_min_tokens(self, limit: int | None) -> None:
        if limit is not None and self.min_tokens > limit:
            raise ValueError(f"min_tokens ({self.min_tokens}) is above the token limit ({limit})")


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(_SamplingFields):
    """`POST /v1/completions`. OpenAI's default `max_tokens` here is 16 (vLLM follows it)."""

    prompt: str | Annotated[list[str], Field(min_length=1)] | TokenIds | list[TokenIds]
    max_tokens: TokenLimit | None = 16
    echo: bool = False
    suffix: str | None = None
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) == 0:
            raise ValueError("prompt must not be empty")
        self._check_min_tokens(self.max_tokens)
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompt(s), each as text or as token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        out: list[str | list[int]] = []
        ids: list[int] = []
        for x in p:
            if isinstance(x, int):
                ids.append(x)
            else:
                out.append(x)
        return [ids] if ids else out


class TextPart(OpenAIRequestModel):
    type: str
    text: str | None = None


class ChatMessage(OpenAIRequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The text of the message; non-text parts (images, audio) are refused upstream."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content)

    def non_text_parts(self) -> list[str]:
        if not isinstance(self.content, list):
            return []
        return [p.type for p in self.content if p.type != "text"]


class ChatCompletionRequest(_SamplingFields):
    """`POST /v1/chat/completions`. Without a limit, the answer may fill the context."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: TokenLimit | None = None
    max_completion_tokens: TokenLimit | None = None  # OpenAI's newer name for max_tokens

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens else self.max_tokens

    @model_validator(mode="after")
    def _limits(self) -> ChatCompletionRequest:
        self._check_min_tokens(self.token_limit)
        return self


# ---------------------------------------------------------------------------------- responses
class Usage(OpenAIModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int = 0


FinishReason = Literal["stop", "length", "abort", "tool_calls", "content_filter"]


class CompletionChoice(OpenAIModel):
    index: int = 0
    text: str
    logprobs: Any = None
    finish_reason: FinishReason | None = None


class CompletionResponse(OpenAIModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class CompletionChunk(CompletionResponse):
    """One SSE event of a streamed completion: the OpenAI API sends the same shape (and the same
    `object`) as the full response, each choice holding the text of this event only."""


class AssistantMessage(OpenAIModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(OpenAIModel):
    index: int = 0
    message: AssistantMessage
    logprobs: Any = None
    finish_reason: FinishReason | None = None


class ChatCompletionResponse(OpenAIModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class ChatDelta(OpenAIModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(OpenAIModel):
    index: int = 0
    delta: ChatDelta
    logprobs: Any = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(OpenAIModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(OpenAIModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "block"
    max_model_len: int | None = None  # vLLM adds it; useful to a gateway


class ModelList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(OpenAIModel):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class ErrorResponse(OpenAIModel):
    """OpenAI's error body; Block's problem+json bodies carry it under `error` too, so OpenAI
    clients show the message."""

    error: ErrorDetail


# ---------------------------------------------------------------------------------- helpers
def sse_event(chunk: BaseModel) -> bytes:
    """One server-sent event carrying `chunk` as JSON."""
    return b"data: " + chunk.model_dump_json().encode() + b"\n\n"


def validation_message(err: ValidationError) -> str:
    """A one-line, human-readable summary of a pydantic error: `field.path: what is wrong`."""
    parts = []
    for e in err.errors(include_url=False, include_input=False):
        loc = ".".join(str(x) for x in e["loc"] if not _is_union_tag(x))
        parts.append(f"{loc}: {e['msg']}" if loc else str(e["msg"]))
    # Unions report one error per branch; keep each distinct sentence once, in order.
    unique = list(dict.fromkeys(parts))
    if len(unique) > 4:
        unique = [*unique[:4], f"... and {len(unique) - 4} more"]
    return "; ".join(unique)


def _is_union_tag(part: object) -> bool:
    # pydantic names union branches in the location (`str`, `list[str]`, `function-after[...]`).
    if not isinstance(part, str):
        return False
    return part in ("str", "int") or "[" in part or part.startswith("function")


__all__ = [
    "MAX_TOKENS_LIMIT",
    "OUTPUT_TOKENS_HEADER",
    "SSE_DONE",
    "AssistantMessage",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatDelta",
    "ChatMessage",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionRequest",
    "CompletionResponse",
    "ErrorDetail",
    "ErrorResponse",
    "ModelCard",
    "ModelList",
    "StreamOptions",
    "TextPart",
    "Usage",
    "sse_event",
    "validation_message",
]
