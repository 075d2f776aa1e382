"""Pure parts of the chat client: history, input, SSE events, route and speed.

- History is bounded by message count and by characters (oldest turns go first, the system
  prompt stays): an unbounded history would grow every request until the model's context
  overflows and each answer gets slower and dearer.
- Multi-line input: a line ending in ``\\`` continues on the next line; a line that is just
  ``\"\"\"`` opens a block that the next such line closes (pasted code keeps its own backslashes).
- SSE: ``data:`` lines only, ``[DONE]`` ends the stream; anything else (comments, keep-alives)
  is ignored as the spec says.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

BLOCK_FENCE = '"""'


@dataclass
class Conversation:
    max_messages: int = 20
    max_chars: int = 16_000
    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    def messages_with(self, user_text: str) -> list[dict[str, str]]:
        """What to send for the next question (history + the question), without keeping it yet."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self._bounded(self.turns + [{"role": "user", "content": user_text}])

    def record(self, user_text: str, answer: str) -> None:
        """Keep a finished exchange (a failed one is not kept: it would poison later context)."""
        self.turns = self._bounded(self.turns + [{"role": "user", "content": user_text},
                                                  {"role": "assistant", "content": answer}])

    def clear(self) -> None:
        self.turns = []

    def _bounded(self, turns: list[dict[str, str]]) -> list[dict[str, str]]:
        out = list(turns)
        while len(out) > 1 and (len(out) > self.max_messages or sum(len(m["content"]) for m in out) > self.max_chars):
            out.pop(0)
        # never start with an orphaned assistant answer
        while len(out) > 1 and out[0]["role"] == "assistant":
            out.pop(0)
        return out


class InputCollector:
    """Feeds lines in, says when a whole message is complete (``feed`` returns it) or not (None)."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._in_block = False

    @property
    def continuing(self) -> bool:
        return self._in_block or bool(self._lines)

    def feed(self, line: str) -> str | None:
        if self._in_block:
            if line.strip() == BLOCK_FENCE:
                self._in_block = False
                return self._finish()
            self._lines.append(line)
            return None
        if line.strip() == BLOCK_FENCE and not self._lines:
            self._in_block = True
            return None
        if line.endswith("\\"):
            self._lines.append(line[:-1])
            return None
        self._lines.append(line)
        return self._finish()

    def _finish(self) -> str:
        text = "\n".join(self._lines)
        self._lines = []
        return text


def sse_events(lines: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    """JSON payloads of the ``data:`` lines of an SSE stream, up to ``[DONE]``."""
    for raw in lines:
        line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        line = line.rstrip("\r\n")
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        if data:
            yield json.loads(data)


@dataclass(frozen=True)
class RouteInfo:
    route: str  # "edge" | "cloud" | "?"
    reason: str | None = None
    device: str | None = None
    endpoint: str | None = None
    model: str | None = None
    cache: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RouteInfo:
        h = {k.lower(): v for k, v in headers.items()}
        return cls(route=h.get("x-ig3-route", "?"), reason=h.get("x-ig3-route-reason"), device=h.get("x-ig3-device"),
                   endpoint=h.get("x-ig3-endpoint"), model=h.get("x-ig3-model"), cache=h.get("x-ig3-cache"))

    def describe(self) -> str:
        if self.route == "edge":
            where = f"edge device {self.device}" if self.device else "edge device"
        elif self.route == "cloud":
            where = f"cloud ({self.endpoint})" if self.endpoint else "cloud"
        else:
            where = "route unknown"
        extras = [x for x in (self.model, f"reason {self.reason}" if self.reason else None,
                              "cached" if self.cache == "hit" else None) if x]
        return where + (" · " + " · ".join(extras) if extras else "")


@dataclass(frozen=True)
class AnswerStats:
    """Speed of one answer. The decode rate counts from the first to the last content delta; when
    the deltas arrive in one burst (an edge device's stream relayed in a batch) that span says
    nothing, so the rate is then end-to-end: tokens over the whole request, labelled as such."""
    completion_tokens: int | None
    first_token_s: float | None  # time to the first content delta, from the request
    generation_s: float  # from the first content delta to the end of the stream
    total_s: float = 0.0  # from the request to the end of the stream

    MIN_SPAN_S = 0.05

    @property
    def tokens_per_s(self) -> tuple[float, str] | None:
        n = self.completion_tokens
        if not n:
            return None
        if n > 1 and self.generation_s >= self.MIN_SPAN_S:
            return (n - 1) / self.generation_s, "tok/s"
        if self.total_s > 0:
            return n / self.total_s, "tok/s end-to-end"
        return None

    def describe(self) -> str:
        parts = []
        if self.completion_tokens is not None:
            parts.append(f"{self.completion_tokens} tokens")
        rate = self.tokens_per_s
        if rate is not None:
            parts.append(f"{rate[0]:.1f} {rate[1]}")
        if self.first_token_s is not None:
            parts.append(f"first token {self.first_token_s * 1000:.0f} ms")
        return " · ".join(parts)
