"""The task state machine — pure functions from (task, event) to the next task.

Each function checks the transition is legal for the task it was given and returns the next
version of the record (``version + 1``). The store writes it on the condition that the stored
version is still the one read (optimistic concurrency), so of two racing writers exactly one
wins and the loser re-reads and re-decides. Together these make duplicate, late and
out-of-order results, timeouts and re-deliveries harmless: a task reaches exactly one terminal
state, once.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from ig3.config import DispatchSettings
from ig3.tasks.model import Route, Task, TaskStatus
from ig3.wire import ResultError, TaskOutput, Usage

# Errors that say the task itself is bad: another device would fail the same way.
NON_RETRYABLE = frozenset({"bad_task", "invalid_input", "context_length_exceeded"})


class InvalidTransition(Exception):
    """The event does not apply to the task as it is now (stale, duplicate or foreign)."""


class Outcome(str, Enum):
    REQUEUED = "requeued"
    FAILED = "failed"


@dataclass(frozen=True)
class Failure:
    task: Task
    outcome: Outcome


def _next(task: Task, now: float, **changes: Any) -> Task:
    return task.model_copy(update={**changes, "updated_at": now, "version": task.version + 1})


def choose_route(task: Task, settings: DispatchSettings) -> Route | None:
    """Where the next attempt goes: edge first, then the cloud, then nowhere (None)."""
    if task.constraints.prefer == "cloud":
        return "cloud" if task.cloud_attempts < settings.cloud_attempts else None
    if task.edge_attempts < settings.edge_attempts and task.constraints.prefer in ("edge", "auto"):
        return "edge"
    if task.constraints.prefer == "edge":
        return None
    return "cloud" if task.cloud_attempts < settings.cloud_attempts else None


def assign(task: Task, *, route: Route, device: str, deadline: float, now: float,
           model_hash: str | None = None, decision: dict[str, Any] | None = None) -> Task:
    if task.status is not TaskStatus.PENDING:
        raise InvalidTransition(f"assign: task is {task.status.value}")
    return _next(task, now, status=TaskStatus.ASSIGNED, attempt=task.attempt + 1, device=device, route=route,
                 deadline=deadline, model_hash=model_hash, decision=decision,
                 edge_attempts=task.edge_attempts + (route == "edge"),
                 cloud_attempts=task.cloud_attempts + (route == "cloud"))


def _check_assignment(task: Task, attempt: int, device: str) -> None:
    if task.status is not TaskStatus.ASSIGNED:
        raise InvalidTransition(f"task is {task.status.value}")
    if attempt != task.attempt:
        raise InvalidTransition(f"attempt {attempt} is not the current attempt {task.attempt}")
    if device != task.device:
        raise InvalidTransition("the result does not come from the assigned device")


def complete(task: Task, *, attempt: int, device: str, output: TaskOutput | None, usage: Usage | None,
             now: float) -> Task:
    _check_assignment(task, attempt, device)
    return _next(task, now, status=TaskStatus.COMPLETED, output=output, usage=usage, error=None)


def fail_attempt(task: Task, *, attempt: int, device: str, error: ResultError, settings: DispatchSettings,
                 now: float) -> Failure:
    """An assignment failed (device error, released, or deadline passed)."""
    _check_assignment(task, attempt, device)
    excluded = task.excluded if device in task.excluded or task.route != "edge" else [*task.excluded, device]
    if error.code in NON_RETRYABLE and not error.retryable:
        return Failure(_next(task, now, status=TaskStatus.FAILED, error=error, excluded=excluded), Outcome.FAILED)
    probe = task.model_copy(update={"excluded": excluded})
    if choose_route(probe, settings) is None:
        final = ResultError(code="attempts_exhausted", retryable=False,
                            message=f"gave up after {task.attempt} attempts; last error: {error.code}")
        return Failure(_next(task, now, status=TaskStatus.FAILED, error=final, excluded=excluded), Outcome.FAILED)
    return Failure(_next(task, now, status=TaskStatus.PENDING, device=None, deadline=None, error=error,
                         excluded=excluded), Outcome.REQUEUED)


def fail_unplaceable(task: Task, *, reason: str, now: float) -> Task:
    """No route can take the task at all (no device serves the model and no cloud fallback)."""
    if task.status is not TaskStatus.PENDING:
        raise InvalidTransition(f"fail_unplaceable: task is {task.status.value}")
    return _next(task, now, status=TaskStatus.FAILED,
                 error=ResultError(code="no_capacity", message=reason, retryable=False))


def backoff_s(attempt: int, settings: DispatchSettings, jitter: float) -> float:
    """Exponential backoff with full jitter (``jitter`` in [0, 1) from the caller's RNG)."""
    cap = min(settings.backoff_max_s, settings.backoff_base_s * (2 ** max(0, attempt - 1)))
    return cap * jitter
