"""Heartbeats -> live device state (Redis, via the scheduler's LiveState) + online/offline events.

Heartbeats arrive batched (IoT rule -> SQS -> one invocation per batch, never one per
heartbeat). The IoT rule sets ``thing`` from the topic, so a device can only speak for itself.
Applying a heartbeat is idempotent (latest state wins), so a redelivered batch is harmless.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from ig3.events import DomainEvent
from ig3.observability import logger, metrics
from ig3.wire import Heartbeat


def parse_heartbeats(records: list[dict[str, Any]]) -> list[Heartbeat]:
    beats: dict[str, Heartbeat] = {}
    for record in records:
        try:
            beat = Heartbeat.model_validate(orjson.loads(record["body"]))
        except (ValueError, KeyError, TypeError):
            metrics.add_metric(name="HeartbeatsMalformed", unit="Count", value=1)
            continue
        prev = beats.get(beat.thing)
        if prev is None or beat.ts >= prev.ts:
            beats[beat.thing] = beat  # only the newest per device matters
    return list(beats.values())


def apply_heartbeat_batch(records: list[dict[str, Any]], live: Any | None = None, events: Any | None = None,
                          clock: Callable[[], float] = time.time) -> dict:
    from ig3.tasks.wiring import live_state

    live = live or live_state()
    if events is None:
        from ig3 import config
        from ig3.events import EventBridgePublisher

        events = EventBridgePublisher(config.event_bus())
    beats = parse_heartbeats(records)
    by_thing = {b.thing: b for b in beats}
    online = live.apply_heartbeats(beats)
    now = clock()
    offline = live.expire(now)
    # Event ids name the episode (its heartbeat / expiry second), so a device that goes offline
    # twice produces two distinct events while a redelivery of one stays one.
    out = [DomainEvent("DeviceOnline", {"device_id": t}, f"{t}:online:{int(by_thing[t].ts)}") for t in online]
    out += [DomainEvent("DeviceOffline", {"device_id": t}, f"{t}:offline:{int(now)}") for t in offline]
    if out:
        events.publish(out)
    metrics.add_metric(name="Heartbeats", unit="Count", value=len(beats))
    if online or offline:
        logger.info("fleet changed", extra={"online": len(online), "offline": len(offline)})
    return {"batchItemFailures": []}
