"""Domain events on the EventBridge bus "ig3" — the port and its adapters.

Every state change is published as ``source="ig3"``, ``detail-type=<EventName>``. Consumers
are idempotent: ``detail.event_id`` is deterministic for a transition (e.g. task id + state +
attempt), so a redelivered or re-published event is recognisably the same event.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

SOURCE = "ig3"
MAX_BATCH = 10  # PutEvents entries per call


@dataclass(frozen=True)
class DomainEvent:
    detail_type: str  # TaskSubmitted, TaskAssigned, DeviceRegistered, ...
    detail: dict[str, Any]
    event_id: str  # deterministic per transition: consumers dedupe on it
    time: float = field(default_factory=time.time)


class EventPublisher(Protocol):
    def publish(self, events: list[DomainEvent]) -> None: ...


class EventBridgePublisher:
    def __init__(self, bus_name: str, client: Any | None = None):
        self._bus = bus_name
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("events")
        return self._client

    def publish(self, events: list[DomainEvent]) -> None:
        rejected = self.put(events)
        if rejected:
            codes = sorted({code for _, code in rejected})
            raise RuntimeError(f"EventBridge rejected {len(rejected)} events: {codes}")

    def put(self, events: list[DomainEvent]) -> list[tuple[DomainEvent, str]]:
        """PutEvents in chunks of ``MAX_BATCH``; returns the events EventBridge did not take, each
        with its error code (a partial failure names its entries)."""
        rejected: list[tuple[DomainEvent, str]] = []
        for i in range(0, len(events), MAX_BATCH):
            chunk = events[i : i + MAX_BATCH]
            entries = [
                {
                    "Source": SOURCE,
                    "DetailType": e.detail_type,
                    "Detail": orjson.dumps({**e.detail, "event_id": e.event_id, "ts": e.time}).decode(),
                    "EventBusName": self._bus,
                }
                for e in chunk
            ]
            resp = self.client.put_events(Entries=entries)
            if resp.get("FailedEntryCount"):
                # Response entries are in request order.
                rejected += [(e, r["ErrorCode"]) for e, r in zip(chunk, resp["Entries"])
                             if r.get("ErrorCode")]
        return rejected


class DeferredEventPublisher:
    """Holds the events of one SQS batch and publishes them together at its end.

    A dispatch batch of 10 tasks made ~10 PutEvents calls (one per transition, 38% of dispatch
    time); deferred, it makes one per 10 events. At-least-once is kept by the caller: ``flush``
    runs before the batch's messages are acknowledged (``ig3.sqs_batch``), and it returns the
    owners (SQS message ids) of the events EventBridge did not take, so exactly those messages
    are reported failed and redelivered — their handlers replay the events of the state their
    task is in (deterministic ``event_id``: consumers see a duplicate, never a gap).

    Outside ``collecting()`` (the API, inline dispatch) it publishes at once, like its inner one.
    The batch is per thread: a process that also serves requests on other threads (the llm app
    shares the task service) never has their events swept into a batch.
    """

    RETRIES = 1  # a throttled or internally failed entry gets one more PutEvents before its message fails

    def __init__(self, inner: Any):
        self.inner = inner
        self._local = threading.local()

    def publish(self, events: list[DomainEvent]) -> None:
        pending = getattr(self._local, "pending", None)
        if pending is None:
            self.inner.publish(events)
            return
        owner = getattr(self._local, "owner", None)
        pending.extend((owner, e) for e in events)

    @contextmanager
    def collecting(self) -> Iterator[None]:
        if getattr(self._local, "pending", None) is not None:
            raise RuntimeError("already collecting a batch")
        self._local.pending = []
        try:
            yield
        finally:
            leftover, self._local.pending, self._local.owner = self._local.pending, None, None
            if leftover:  # flush() was not reached: never drop an event silently
                self._put(leftover)

    @contextmanager
    def owned_by(self, owner: str) -> Iterator[None]:
        """Events published inside belong to ``owner`` (the SQS message being handled)."""
        previous, self._local.owner = getattr(self._local, "owner", None), owner
        try:
            yield
        finally:
            self._local.owner = previous

    def flush(self) -> set[str]:
        """Publish what was collected; returns the owners whose events were not all taken."""
        pending = getattr(self._local, "pending", None) or []
        if getattr(self._local, "pending", None) is not None:
            self._local.pending = []
        return self._put(pending)

    def _put(self, pending: list[tuple[str | None, DomainEvent]]) -> set[str]:
        if not pending:
            return set()
        owners = {id(e): owner for owner, e in pending}
        events = [e for _, e in pending]
        failed: list[DomainEvent] = []
        for attempt in range(self.RETRIES + 1):
            failed = self._put_once(events)
            if not failed:
                return set()
            events = failed
        from ig3.observability import logger

        logger.warning("events not published; their messages will be redelivered",
                       extra={"events": len(failed), "types": sorted({e.detail_type for e in failed})})
        return {o for o in (owners[id(e)] for e in failed) if o is not None}

    def _put_once(self, events: list[DomainEvent]) -> list[DomainEvent]:
        put = getattr(self.inner, "put", None)
        failed: list[DomainEvent] = []
        for i in range(0, len(events), MAX_BATCH):
            chunk = events[i : i + MAX_BATCH]
            try:
                if put is not None:
                    failed += [e for e, _ in put(chunk)]
                else:
                    self.inner.publish(chunk)
            except Exception:  # noqa: BLE001 — the whole call failed: no event of the chunk went out
                failed += chunk
        return failed


class MemoryEventPublisher:
    """In-memory fake for unit tests."""

    def __init__(self) -> None:
        self.events: list[DomainEvent] = []

    def publish(self, events: list[DomainEvent]) -> None:
        self.events.extend(events)

    def types(self) -> list[str]:
        return [e.detail_type for e in self.events]
