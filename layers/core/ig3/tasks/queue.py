"""SQS adapter of the TaskQueue port (dispatch messages and per-assignment timeout messages)."""
from __future__ import annotations

from typing import Any

import orjson

SQS_MAX_DELAY_S = 900


class SqsTaskQueue:
    """Queue URLs may be ``None`` where a function does not declare the queue (its role cannot
    send there either): it fails on the first send, not when the service is built — the results
    function never arms a timeout and must still start."""

    def __init__(self, tasks_queue_url: str | None, timeouts_queue_url: str | None,
                 client: Any | None = None):
        self._tasks = tasks_queue_url
        self._timeouts = timeouts_queue_url
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("sqs")
        return self._client

    def send_dispatch(self, task_id: str, delay_s: float = 0) -> None:
        self.client.send_message(QueueUrl=_declared(self._tasks, "tasks"),
                                 MessageBody=orjson.dumps({"task_id": task_id}).decode(),
                                 DelaySeconds=_delay(delay_s))

    def send_timeout(self, task_id: str, attempt: int, deadline: float, delay_s: float) -> None:
        body = {"task_id": task_id, "attempt": attempt, "deadline": deadline}
        self.client.send_message(QueueUrl=_declared(self._timeouts, "timeouts"),
                                 MessageBody=orjson.dumps(body).decode(),
                                 DelaySeconds=_delay(delay_s))


class SqsCloudQueue:
    """The dispatcher's hand-off to the cloud worker (``CloudQueue`` port): one message per cloud
    assignment on the ``cloud`` queue, consumed one per invocation."""

    def __init__(self, cloud_queue_url: str, client: Any | None = None):
        self._url = cloud_queue_url
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("sqs")
        return self._client

    def send_cloud(self, task_id: str, attempt: int) -> None:
        self.client.send_message(QueueUrl=self._url,
                                 MessageBody=orjson.dumps({"task_id": task_id, "attempt": attempt}).decode())


def _declared(url: str | None, queue: str) -> str:
    if not url:
        from ig3.topology import queue_env

        raise RuntimeError(
            f"this function does not declare the {queue} queue ({queue_env(queue)} is not set)")
    return url


def _delay(delay_s: float) -> int:
    # SQS delays are whole seconds in [0, 900]; round up so a timeout never fires early.
    return max(0, min(SQS_MAX_DELAY_S, int(-(-delay_s // 1))))


class MemoryTaskQueue:
    def __init__(self) -> None:
        self.dispatches: list[tuple[str, float]] = []
        self.timeouts: list[tuple[str, int, float, float]] = []

    def send_dispatch(self, task_id: str, delay_s: float = 0) -> None:
        self.dispatches.append((task_id, delay_s))

    def send_timeout(self, task_id: str, attempt: int, deadline: float, delay_s: float) -> None:
        self.timeouts.append((task_id, attempt, deadline, delay_s))


class MemoryCloudQueue:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    def send_cloud(self, task_id: str, attempt: int) -> None:
        self.sent.append((task_id, attempt))
