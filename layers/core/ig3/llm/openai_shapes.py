"""OpenAI response objects built by the gateway (edge answers, cache replays) and SSE framing.

Cloud answers from OpenAI-compatible upstreams are relayed as they come (only ``model`` is
set to the public name); these builders produce the same shapes for everything else.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson

SSE_DONE = b"data: [DONE]\n\n"


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def sse_error(message: str, code: str, type_: str = "server_error") -> bytes:
    return sse({"error": {"type": type_, "message": message, "code": code}})


def usage_obj(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_completion(rid: str, model: str, text: str, finish: str | None, prompt: int, completion: int,
                    created: int | None = None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": created or int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish or "stop", "logprobs": None}],
            "usage": usage_obj(prompt, completion)}


def text_completion(rid: str, model: str, text: str, finish: str | None, prompt: int, completion: int,
                    created: int | None = None) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created or int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish or "stop", "logprobs": None}],
            "usage": usage_obj(prompt, completion)}


def embeddings(model: str, vectors: list[list[float]], prompt: int) -> dict[str, Any]:
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}


class ChunkBuilder:
    """Streamed chunks of one response (``chat.completion.chunk`` or ``text_completion``)."""

    def __init__(self, rid: str, model: str, kind: str, created: int | None = None):
        self.rid, self.model, self.kind = rid, model, kind
        self.created = created or int(time.time())
        self.object = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.rid, "object": self.object, "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def role(self, index: int = 0) -> dict[str, Any]:
        return self._chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])

    def delta(self, text: str, index: int = 0) -> dict[str, Any]:
        if self.kind == "chat":
            return self._chunk([{"index": index, "delta": {"content": text}, "finish_reason": None}])
        return self._chunk([{"index": index, "text": text, "finish_reason": None}])

    def finish(self, reason: str | None, index: int = 0) -> dict[str, Any]:
        if self.kind == "chat":
            return self._chunk([{"index": index, "delta": {}, "finish_reason": reason or "stop"}])
        return self._chunk([{"index": index, "text": "", "finish_reason": reason or "stop"}])

    def usage(self, prompt: int, completion: int) -> dict[str, Any]:
        return self._chunk([], usage=usage_obj(prompt, completion))


def replay_chunks(response: dict[str, Any], kind: str, include_usage: bool) -> Iterator[dict[str, Any]]:
    """A complete (cached) response as the chunk sequence a live stream would have sent."""
    b = ChunkBuilder(response.get("id", "cached"), response.get("model", ""), kind, response.get("created"))
    for choice in response.get("choices", []):
        i = choice.get("index", 0)
        if kind == "chat":
            yield b.role(i)
            text = (choice.get("message") or {}).get("content") or ""
        else:
            text = choice.get("text") or ""
        if text:
            yield b.delta(text, i)
        yield b.finish(choice.get("finish_reason"), i)
    if include_usage:
        u = response.get("usage") or {}
        yield b.usage(int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0)))


class StreamAssembler:
    """Folds relayed chunks back into one complete response (for the cache) and keeps usage."""

    def __init__(self, kind: str):
        self.kind = kind
        self.texts: dict[int, list[str]] = {}
        self.finish: dict[int, str | None] = {}
        self.usage: dict[str, Any] | None = None
        self.first: dict[str, Any] | None = None
        self.cacheable = True  # tool-call deltas are not reassembled: such streams are not cached

    def add(self, chunk: dict[str, Any]) -> None:
        if self.first is None:
            self.first = chunk
        u = chunk.get("usage")
        if u:
            self.usage = u
        for c in chunk.get("choices") or ():
            i = c.get("index", 0)
            if self.kind == "chat":
                d = c.get("delta") or {}
                if d.get("tool_calls") or d.get("function_call"):
                    self.cacheable = False
                piece = d.get("content")
            else:
                piece = c.get("text")
            if piece:
                self.texts.setdefault(i, []).append(piece)
            else:
                self.texts.setdefault(i, [])
            if c.get("finish_reason"):
                self.finish[i] = c["finish_reason"]

    def response(self) -> dict[str, Any] | None:
        if self.first is None or not self.cacheable:
            return None
        u = self.usage or {}
        p, c = int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0))
        build = chat_completion if self.kind == "chat" else text_completion
        out = build(self.first.get("id", ""), self.first.get("model", ""), "", None, p, c, self.first.get("created"))
        choices = []
        for i in sorted(self.texts):
            text = "".join(self.texts[i])
            if self.kind == "chat":
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "finish_reason": self.finish.get(i) or "stop", "logprobs": None})
            else:
                choices.append({"index": i, "text": text, "finish_reason": self.finish.get(i) or "stop",
                                "logprobs": None})
        out["choices"] = choices
        return out
