"""The task record and the request that creates one (pure pydantic, no AWS)."""
from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ig3.wire import ResultError, TaskInput, TaskKind, TaskLimits, TaskOutput, Usage

MAX_INPUT_CHARS = 64_000


class TaskStatus(str, Enum):
    PENDING = "PENDING"
    ASSIGNED = "ASSIGNED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED})
Route = Literal["edge", "cloud"]


class Constraints(BaseModel):
    model_config = ConfigDict(extra="forbid")
    region: str | None = Field(default=None, max_length=32)
    near: tuple[float, float] | None = None  # client (lat, lon)
    prefer: Literal["edge", "cloud", "auto"] = "auto"
    deadline_s: float | None = Field(default=None, gt=0, le=3600)
    # SLO: decode speed the client needs. When no free device serving the model reports at least
    # this, the task goes straight to the cloud fallback (if one serves it; else best effort on edge).
    min_tokens_per_s: float | None = Field(default=None, gt=0, le=100_000)


class TaskSpec(BaseModel):
    """``POST /v1/tasks`` body."""

    model_config = ConfigDict(extra="forbid")
    kind: TaskKind
    model: str = Field(min_length=1, max_length=128)
    input: TaskInput
    limits: TaskLimits = Field(default_factory=TaskLimits)
    constraints: Constraints = Field(default_factory=Constraints)
    stream: bool = True

    @model_validator(mode="after")
    def _input_matches_kind(self) -> "TaskSpec":
        i = self.input
        need = {"chat": "messages", "completion": "prompt", "embedding": "texts"}[self.kind]
        given = [k for k in ("messages", "prompt", "texts") if getattr(i, k) is not None]
        if given != [need]:
            raise ValueError(f"a {self.kind} task takes input.{need} (and nothing else)")
        if need == "messages" and not i.messages:
            raise ValueError("input.messages must not be empty")
        if need == "texts" and not i.texts:
            raise ValueError("input.texts must not be empty")
        size = len(i.prompt or "") + sum(len(m.content) for m in i.messages or []) + sum(len(t) for t in i.texts or [])
        if size > MAX_INPUT_CHARS:
            raise ValueError(f"input exceeds {MAX_INPUT_CHARS} characters")
        return self


class Task(BaseModel):
    """The durable task record (DynamoDB ``tasks`` table)."""

    model_config = ConfigDict(extra="ignore")
    task_id: str
    status: TaskStatus = TaskStatus.PENDING
    kind: TaskKind
    model: str
    input: TaskInput
    limits: TaskLimits = Field(default_factory=TaskLimits)
    constraints: Constraints = Field(default_factory=Constraints)
    stream: bool = True
    account: str = ""
    attempt: int = 0  # incremented at each assignment
    edge_attempts: int = 0
    cloud_attempts: int = 0
    device: str | None = None
    route: Route | None = None
    deadline: float | None = None
    excluded: list[str] = Field(default_factory=list)
    output: TaskOutput | None = None
    error: ResultError | None = None
    usage: Usage | None = None
    model_hash: str | None = None
    decision: dict[str, Any] | None = None
    created_at: float
    updated_at: float
    version: int = 0  # bumped on every write (optimistic concurrency)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def public_view(self) -> dict[str, Any]:
        """What ``GET /v1/tasks/{id}`` shows."""
        body: dict[str, Any] = {
            "id": self.task_id, "status": self.status.value, "kind": self.kind, "model": self.model,
            "attempt": self.attempt, "route": self.route, "device": self.device,
            "created_at": self.created_at, "updated_at": self.updated_at,
        }
        if self.output is not None:
            body["output"] = self.output.model_dump(exclude_none=True)
        if self.error is not None:
            body["error"] = self.error.model_dump()
        if self.usage is not None:
            body["usage"] = self.usage.model_dump(exclude_none=True)
        if self.decision is not None:
            body["decision"] = self.decision
        return body
