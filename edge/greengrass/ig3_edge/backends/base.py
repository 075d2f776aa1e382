"""The backend interface and the pieces every backend shares.

A backend turns one task into text deltas (streamed through ``on_delta`` as they are
produced) or embeddings. It checks ``should_stop()`` between tokens; that callable returns
``"cancelled"`` or ``"deadline"`` when the agent wants the work stopped, so limits and
cancellation are enforced at token granularity without the backend knowing why.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from ig3.wire import ChatMessage, ModelInfo, TaskLimits

DeltaSink = Callable[[str], None]
StopCheck = Callable[[], "str | None"]


class TaskError(Exception):
    """A task-level failure that becomes a ``status="error"`` result (never crashes the agent)."""

    def __init__(self, code: str, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


@dataclass
class Generation:
    text: str
    finish_reason: str  # stop | length | cancelled | deadline
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float | None  # from the start of work to the first token
    duration_ms: float

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed: tokens after the first over the time after the first (prefill excluded)."""
        if self.completion_tokens < 2 or self.ttft_ms is None:
            return None
        decode_ms = self.duration_ms - self.ttft_ms
        return (self.completion_tokens - 1) / (decode_ms / 1000.0) if decode_ms > 0 else None


@dataclass
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int
    duration_ms: float


class Backend(Protocol):
    """What the executor needs from an inference engine."""

    def models(self) -> list[ModelInfo]:
        """The models it serves now (the heartbeat reports them)."""

    def refresh(self) -> bool:
        """Pick up added/removed models; True when the set changed."""

    def model_hash(self, model: str) -> str | None:
        """sha256 of the model's weights file, when there is one."""

    def warmup(self, model: str) -> None:
        """Load the model and run a 1-token generation so the first task is not slow."""

    def generate(
        self,
        model: str,
        *,
        messages: list[ChatMessage] | None,
        prompt: str | None,
        limits: TaskLimits,
        on_delta: DeltaSink,
        should_stop: StopCheck,
    ) -> Generation:
        """Chat (``messages``) or completion (``prompt``), streaming deltas. Raises TaskError."""

    def embed(self, model: str, texts: list[str]) -> Embeddings:
        """Embeddings for ``texts``. Raises TaskError."""

    def close(self) -> None:
        """Release models and connections."""


class StopStringFilter:
    """Holds back text that could be the start of a stop string; cuts at the first stop string.

    ``feed`` returns the text safe to emit now and whether a stop string was hit.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        self.pending += text
        hit = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if hit >= 0:
            out, self.pending = self.pending[:hit], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
