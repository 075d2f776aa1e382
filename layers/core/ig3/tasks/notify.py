"""Terminal-state announcements for synchronous waiters (the LLM gateway, ``?wait=`` readers).

The results function pushes the finished record onto a short-lived Redis list per task; a waiter
blocks on it (``BLPOP``) instead of polling DynamoDB, so a waiting Lambda burns no CPU and wakes
within a millisecond of the result. Multiple announcements of the same terminal state (at-least-
once redelivery) are harmless: the waiter takes the first.
"""
from __future__ import annotations

from typing import Any

import orjson

from ig3.tasks.model import Task

KEY = "ig3:task-done:{}"
KEEP_S = 300


class RedisTerminalNotifier:
    def __init__(self, redis: Any):
        self._redis = redis

    def announce(self, task: Task) -> None:
        key = KEY.format(task.task_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.lpush(key, orjson.dumps(task.model_dump(mode="json", exclude_none=True)))
        pipe.ltrim(key, 0, 0)
        pipe.expire(key, KEEP_S)
        pipe.execute()


def wait_terminal(redis: Any, task_id: str, timeout_s: float) -> Task | None:
    """Block until the task's terminal record is announced (None on timeout).

    Uses ``LINDEX`` first (already finished) then ``BLMOVE`` onto itself, so several waiters
    each see the record and it stays for late readers until it expires.
    """
    key = KEY.format(task_id)
    raw = redis.lindex(key, 0)
    if raw is None:
        raw = redis.blmove(key, key, timeout_s, "LEFT", "LEFT")
    return Task.model_validate(orjson.loads(raw)) if raw is not None else None


class MemoryNotifier:
    def __init__(self) -> None:
        self.announced: list[Task] = []

    def announce(self, task: Task) -> None:
        self.announced.append(task)
