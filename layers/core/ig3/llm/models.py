"""OpenAI request shapes the gateway reads, validated once, passed through otherwise.

Only the fields the gateway acts on (routing, caching, limits, the edge task) are typed; any
other field (``tools``, ``logprobs``, ``response_format``...) is kept as given (``extra="allow"``)
and forwarded to an OpenAI-compatible upstream untouched, so the gateway never narrows the API.
The body is parsed once with orjson and validated once here; the same dict goes upstream.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_MESSAGES = 1024


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=256)
    user: str | None = Field(default=None, max_length=256)


class _Generation(_Request):
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=128)
    stop: str | list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def output_budget(self) -> int | None:
        return self.max_tokens


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    # str, a list of content parts (text, image_url, ...), or None (assistant tool calls)
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "".join(p.get("text", "") for p in self.content if isinstance(p, dict) and p.get("type") == "text")

    def text_only(self) -> bool:
        return self.content is None or isinstance(self.content, str) or all(
            isinstance(p, dict) and p.get("type") == "text" for p in self.content)


class ChatCompletionRequest(_Generation):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    def output_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def needs_structured_output(self) -> bool:
        fmt = (self.response_format or {}).get("type")
        return bool(self.tools) or fmt in ("json_object", "json_schema")

    def prompt_text(self) -> str:
        return "\n".join(m.text() for m in self.messages)


class CompletionRequest(_Generation):
    prompt: str | list[str] = Field(min_length=1)

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else "\n".join(self.prompt)

    def needs_structured_output(self) -> bool:
        return False


class EmbeddingRequest(_Request):
    input: str | list[str] | list[int] | list[list[int]] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)

    def texts(self) -> list[str] | None:
        """The inputs as strings, or None when they are token ids (cloud only)."""
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(x, str) for x in self.input):
            return list(self.input)  # type: ignore[arg-type]
        return None

    def prompt_text(self) -> str:
        texts = self.texts()
        return "\n".join(texts) if texts is not None else ""


Kind = Literal["chat", "completion", "embedding"]
REQUEST_MODELS: dict[str, type[_Request]] = {
    "chat": ChatCompletionRequest,
    "completion": CompletionRequest,
    "embedding": EmbeddingRequest,
}


def estimate_tokens(text: str) -> int:
    """A cheap prompt-size estimate (~4 characters per token for English, 1 per CJK character).

    Used for routing and for the tpm reservation only; billing and the tpm correction use the
    exact counts the model reports.
    """
    n = len(text)
    if n == 0:
        return 0
    if text.isascii():
        return n // 4 + 1
    wide = sum(1 for ch in text if ord(ch) >= 0x2E80)  # CJK and beyond: about a token each
    return (n - wide) // 4 + wide + 1


def non_latin_share(text: str) -> float:
    """Share of characters outside Latin scripts (a proxy for 'not what a tiny edge model speaks')."""
    if not text or text.isascii():
        return 0.0
    sample = text[:2000]
    other = sum(1 for ch in sample if ord(ch) > 0x024F and not ch.isspace())
    return other / len(sample)
