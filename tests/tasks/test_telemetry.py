"""Heartbeat batches -> online/offline events with ids that name the episode."""
from __future__ import annotations

import json

from ig3.events import MemoryEventPublisher
from ig3.telemetry import apply_heartbeat_batch


class FakeLive:
    def __init__(self):
        self.online_next, self.offline_next = [], []

    def apply_heartbeats(self, beats):
        out, self.online_next = self.online_next, []
        return out

    def expire(self, now=None):
        out, self.offline_next = self.offline_next, []
        return out


def _record(thing, ts):
    return {"body": json.dumps({"thing": thing, "ts": ts})}


def test_a_device_offline_twice_gives_two_events_and_garbage_is_skipped():
    live, events = FakeLive(), MemoryEventPublisher()
    ticks = iter([1.0, 1000.0, 2000.0])
    clock = lambda: next(ticks)  # noqa: E731
    live.online_next = ["d1"]
    apply_heartbeat_batch([_record("d1", 5.0), _record("d1", 9.0), {"body": "not json"}], live, events, clock)
    live.offline_next = ["d1"]
    apply_heartbeat_batch([], live, events, clock)
    live.offline_next = ["d1"]
    apply_heartbeat_batch([], live, events, clock)
    ids = [(e.detail_type, e.event_id) for e in events.events]
    assert ids == [("DeviceOnline", "d1:online:9"), ("DeviceOffline", "d1:offline:1000"),
                   ("DeviceOffline", "d1:offline:2000")]
