"""The dispatch function places an SQS batch together (TaskService.batch_placement + place_many),
through the real handler, moto server, the real scheduler on Redis and simulated devices."""

from __future__ import annotations

from collections import Counter

import pytest

from ig3.tasks.model import TaskStatus
from tests.dispatch.harness import SimDevice

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _spy(monkeypatch, scheduler):
    calls = Counter()
    for name in ("place_many", "place_explained"):
        original = getattr(scheduler, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(scheduler, name, spy)
    return calls


def test_a_batch_of_tasks_is_placed_together_over_distinct_devices(harness, monkeypatch):
    h = harness
    devices = [h.add(SimDevice(f"sim-batch-{i}", capacity=1)) for i in range(6)]
    calls = _spy(monkeypatch, h.svc.placer._scheduler)
    tasks = [h.submit() for _ in range(6)]
    assert h.pump("tasks") == 6  # one receive, one invocation: the whole batch
    assert calls["place_many"] == 1
    assert calls["place_explained"] == 0  # nobody had to place alone: no collisions in the batch
    placed = [h.task(t.task_id) for t in tasks]
    assert all(t.status is TaskStatus.ASSIGNED for t in placed)
    assert sorted(t.device for t in placed) == sorted(d.thing for d in devices)
    for t in placed:
        assert t.decision["timing_us"]["batch"] == 6
    h.run(lambda: all(h.task(t.task_id).terminal for t in tasks))
    assert all(h.task(t.task_id).status is TaskStatus.COMPLETED for t in tasks)
    assert all(h.live.get(d.thing)["reserved"] == 0 for d in devices)


def test_a_task_changed_after_the_batch_placement_is_placed_alone_and_nothing_leaks(harness, monkeypatch):
    h = harness
    devices = [h.add(SimDevice(f"sim-chg-{i}", capacity=1)) for i in range(3)]
    tasks = [h.submit() for _ in range(2)]
    service = h.svc
    changed = tasks[0].task_id
    original_prefetch = service._prefetch

    def prefetch_then_change(task_ids, place_many):
        original_prefetch(task_ids, place_many)
        # Another writer touches the task between the batch placement and its dispatch.
        task = service.store.get(changed)
        service.store.replace(task.model_copy(update={"version": task.version + 1}), expected_version=task.version)

    monkeypatch.setattr(service, "_prefetch", prefetch_then_change)
    assert h.pump("tasks") == 2
    first, second = h.task(changed), h.task(tasks[1].task_id)
    assert first.status is TaskStatus.ASSIGNED and second.status is TaskStatus.ASSIGNED
    assert first.device != second.device
    reserved = {d.thing: h.live.get(d.thing)["reserved"] for d in devices}
    assert reserved[first.device] == 1 and reserved[second.device] == 1
    assert sum(reserved.values()) == 2  # the discarded batch placement was re-used or moved, not doubled


def test_placements_of_records_that_never_dispatched_are_released(harness, monkeypatch):
    h = harness
    devices = [h.add(SimDevice(f"sim-rel-{i}", capacity=1)) for i in range(2)]
    tasks = [h.submit() for _ in range(2)]
    failing = tasks[1].task_id
    original = h.svc.dispatch

    def dispatch(task_id, **kw):
        if task_id == failing:
            raise RuntimeError("simulated crash before this record's dispatch ran")
        return original(task_id, **kw)

    monkeypatch.setattr(h.svc, "dispatch", dispatch)
    assert h.pump("tasks") == 2
    assert h.batch_failures["tasks"] == 1
    assert h.task(failing).status is TaskStatus.PENDING
    assert sum(h.live.get(d.thing)["reserved"] for d in devices) == 1  # only the assigned task's slot
    monkeypatch.setattr(h.svc, "dispatch", original)
    h.expire_failed("tasks")
    h.run(lambda: all(h.task(t.task_id).terminal for t in tasks))
    assert all(h.task(t.task_id).status is TaskStatus.COMPLETED for t in tasks)


def test_cloud_bound_tasks_are_not_placed_with_the_batch(harness, monkeypatch):
    h = harness
    h.add(SimDevice("sim-cloud-mix", capacity=4))
    calls = _spy(monkeypatch, h.svc.placer._scheduler)
    edge = h.submit()
    cloud = h.submit(constraints={"prefer": "cloud"})
    seen = []
    original = h.svc.placer.place_many

    def place_many(items):
        seen.extend(task.task_id for task, _ in items)
        return original(items)

    monkeypatch.setattr(h.svc.placer, "place_many", place_many)
    h.pump("tasks")
    assert seen == [edge.task_id]
    assert calls["place_explained"] == 1  # a batch of one edge task places alone
    assert h.task(edge.task_id).status is TaskStatus.ASSIGNED
    assert h.task(cloud.task_id).route == "cloud"
