"""Bounded executor: ``capacity`` worker threads and a queue of at most ``max_queue`` waiting jobs.

Design decisions:
- Back-pressure is a refusal, not a stall: ``submit`` returns False when every slot is busy
  and the queue is full, and the agent answers with a retryable ``overloaded`` error at once,
  so the cloud can route the task elsewhere instead of waiting for a timeout.
- Threads, not asyncio: llama.cpp releases the GIL while it decodes, so worker threads run
  generations in parallel, and the transport callbacks stay on their own threads.
- Each job carries its own cancel flag; ``drain`` (shutdown) stops intake, hands back the
  queued jobs, and gives the running ones a grace period before they are released.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from ig3.wire import DeviceTask

log = logging.getLogger("ig3_edge.executor")


@dataclass
class Job:
    task: DeviceTask
    received: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str | None = None  # "cancelled" (cloud asked) | "released" (shutdown)

    @property
    def key(self) -> tuple[str, int]:
        return self.task.id, self.task.attempt

    def stop(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.cancel.set()


class Executor:
    def __init__(self, capacity: int, max_queue: int, run: Callable[[Job], None],
                 on_change: Callable[[], None] = lambda: None):
        self.capacity = capacity
        self.max_queue = max_queue
        self._run = run
        self._on_change = on_change
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._running: dict[tuple[str, int], Job] = {}
        self._accepting = True
        self._stopped = False
        self._threads = [threading.Thread(target=self._worker, name=f"ig3-worker-{i}", daemon=True)
                         for i in range(capacity)]
        for t in self._threads:
            t.start()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def find(self, task_id: str, attempt: int | None = None) -> list[Job]:
        with self._cond:
            jobs = list(self._running.values()) + list(self._queue)
        return [j for j in jobs if j.task.id == task_id and (attempt is None or j.task.attempt == attempt)]

    def submit(self, job: Job) -> bool:
        with self._cond:
            if not self._accepting:
                return False
            if len(self._running) + len(self._queue) >= self.capacity + self.max_queue:
                return False
            self._queue.append(job)
            self._cond.notify()
        self._on_change()
        return True

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped and not self._queue:
                    return
                job = self._queue.popleft()
                self._running[job.key] = job
            self._on_change()
            try:
                self._run(job)
            except Exception:  # the run function answers task errors itself; this is a bug guard
                log.exception("job %s failed outside its error handling", job.task.id)
            finally:
                with self._cond:
                    self._running.pop(job.key, None)
                    self._cond.notify_all()
                self._on_change()

    def drain(self, grace_s: float) -> tuple[list[Job], list[Job]]:
        """Stop intake; -> (queued jobs taken back, running jobs still going after ``grace_s``)."""
        with self._cond:
            self._accepting = False
            queued = list(self._queue)
            self._queue.clear()
        self._on_change()
        deadline = time.monotonic() + grace_s
        with self._cond:
            while self._running and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            still = list(self._running.values())
        return queued, still

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._running and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            return not self._running

    def stop(self) -> None:
        with self._cond:
            self._accepting = False
            self._stopped = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=5)
