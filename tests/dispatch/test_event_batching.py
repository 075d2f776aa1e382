"""The dispatcher publishes a batch's EventBridge events together at the batch's end (PutEvents
in chunks of 10, not one call per transition), before any message is acknowledged; a message
whose events were not taken is reported failed, and its redelivery replays them. Real handler,
moto EventBridge/SQS, real Redis scheduler."""

from __future__ import annotations

import pytest

from ig3.events import EventBridgePublisher
from ig3.tasks.model import TaskStatus
from tests.dispatch.harness import SimDevice

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _count_put_events(publisher) -> list[int]:
    calls: list[int] = []
    publisher.client.meta.events.register(
        "provide-client-params.events.PutEvents", lambda params, **_: calls.append(len(params["Entries"]))
    )
    return calls


def test_one_put_events_call_per_ten_events_of_a_batch(harness):
    h = harness
    h.add(SimDevice("sim-hang-a", behaviour="hang", capacity=30))
    assigned_q = h.capture_events({"account": [h.account]}, ["TaskAssigned"])
    tasks = [h.submit() for _ in range(12)]
    calls = _count_put_events(h.svc.events.inner)
    batches = []
    while n := h.pump("tasks"):
        batches.append(n)
    assert sum(batches) == 12 and h.batch_failures["tasks"] == 0
    # Each batch's TaskAssigned events went out in ceil(n/10) calls of up to 10 entries.
    assert calls == [n for b in batches for n in ([10] * (b // 10) + ([b % 10] if b % 10 else []))]
    assert len(calls) < 12
    events = h.drain_events(assigned_q)
    assert sorted(e["detail"]["task_id"] for e in events) == sorted(t.task_id for t in tasks)
    assert all(h.task(t.task_id).status is TaskStatus.ASSIGNED for t in tasks)


def test_unpublished_events_fail_their_messages_and_redelivery_replays_them(harness):
    h = harness
    h.add(SimDevice("sim-hang-a", behaviour="hang", capacity=10))
    assigned_q = h.capture_events({"account": [h.account]}, ["TaskAssigned"])
    tasks = [h.submit() for _ in range(3)]
    real = h.svc.events.inner
    h.svc.events.inner = EventBridgePublisher("ig3-no-such-bus")  # EventBridge refuses every PutEvents
    try:
        delivered = 0
        while delivered < 3:
            delivered += h.pump("tasks")
    finally:
        h.svc.events.inner = real
    # The transitions were written, but their events were not taken: every message comes back.
    assert h.batch_failures["tasks"] == 3
    assert all(h.task(t.task_id).status is TaskStatus.ASSIGNED for t in tasks)
    assert h.drain_events(assigned_q) == []
    # The visibility timeout passes (made immediate here); the redelivered messages replay the events.
    assert h.expire_failed("tasks") == 3
    redelivered = 0
    for _ in range(50):
        redelivered += h.pump("tasks")
        if redelivered >= 3:
            break
    assert redelivered == 3 and h.batch_failures["tasks"] == 3  # no new failures
    events = h.drain_events(assigned_q)
    assert sorted(e["detail"]["task_id"] for e in events) == sorted(t.task_id for t in tasks)
    # Same transition, same event id: consumers that saw one see a duplicate, never two transitions.
    assert {e["detail"]["event_id"] for e in events} == {f"{t.task_id}:assigned:1" for t in tasks}
    assert all(h.task(t.task_id).attempt == 1 for t in tasks)
