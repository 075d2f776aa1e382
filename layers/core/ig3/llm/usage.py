"""Usage events, batched off the hot path.

One ``UsageRecorded`` event per completed request (the billing contract): the request path only
appends a dict to a list; a background flusher sends up to 10 entries per ``PutEvents`` (the
API's batch limit) from a worker thread, every ``interval_s`` or as soon as a batch is full.
``event_id`` is the request id, so a re-sent batch is recognisably the same events. On shutdown
the queue is drained. If EventBridge rejects a batch it is retried with backoff up to a bound,
then logged by id (never by content) and dropped: billing reconciles from the ledger.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from ig3.events import MAX_BATCH, DomainEvent, EventPublisher
from ig3.log import logger

DETAIL_TYPE = "UsageRecorded"
MAX_PENDING = 100_000


class UsageRecorder:
    def __init__(self, publisher: EventPublisher, *, interval_s: float = 0.5, max_attempts: int = 5):
        self._publisher = publisher
        self._interval = interval_s
        self._max_attempts = max_attempts
        self._pending: list[DomainEvent] = []
        self._full = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.sent = 0
        self.dropped = 0

    def record(self, detail: dict[str, Any]) -> None:
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            return
        # The same event id the TaskService gives an edge task's usage (``usage:<task id>``).
        self._pending.append(DomainEvent(DETAIL_TYPE, detail, event_id=f"usage:{detail['request_id']}"))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        if len(self._pending) >= MAX_BATCH:
            self._full.set()

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._full.wait(), self._interval)
            except asyncio.TimeoutError:
                pass
            self._full.clear()
            await self.flush()

    async def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH * 10], self._pending[MAX_BATCH * 10:]
            for attempt in range(1, self._max_attempts + 1):
                try:
                    await asyncio.to_thread(self._publisher.publish, batch)
                    self.sent += len(batch)
                    break
                except Exception as exc:  # noqa: BLE001 — any publisher failure: retry, then drop by id
                    if attempt == self._max_attempts:
                        self.dropped += len(batch)
                        logger.error("usage events dropped", extra={
                            "count": len(batch), "error_type": type(exc).__name__,
                            "request_ids": [e.detail["request_id"] for e in batch][:20]})
                    else:
                        await asyncio.sleep(min(0.2 * 2 ** attempt, 5.0))

    async def close(self, timeout_s: float = 5.0) -> None:
        if self._task is not None:
            self._task.cancel()
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:
            await self.flush()
