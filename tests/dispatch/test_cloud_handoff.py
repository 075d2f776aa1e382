"""The dispatcher hands cloud-routed assignments to the cloud worker (``TaskService.cloud_queue``)
instead of calling the endpoint itself; the worker (``run_cloud``) runs each assignment once.
Task-service ports in memory, the claims on real Redis."""

from __future__ import annotations

import pytest

from ig3.tasks.cloud import RedisCloudClaims
from ig3.tasks.model import TaskStatus
from ig3.tasks.queue import MemoryCloudQueue
from tests.dispatch.test_cloud_policy import Cloud, spec
from tests.tasks.fakes import make_service


@pytest.fixture
def claims(redis_url, redis_prefix):
    import redis

    return RedisCloudClaims(redis.Redis.from_url(redis_url), prefix=redis_prefix)


def dispatcher(claims, **kw):
    cloud = kw.pop("cloud", None) or Cloud()
    svc = make_service(cloud=cloud, **kw)
    svc.cloud_queue = MemoryCloudQueue()
    svc.cloud_claims = claims
    return svc, cloud


def test_the_dispatcher_assigns_and_hands_off_the_worker_runs_it(claims):
    svc, cloud = dispatcher(claims)
    task = svc.submit(spec(constraints={"prefer": "cloud"}), account="acct")
    (tid, _), = svc.queue.dispatches
    out = svc.dispatch(tid)
    assert out.action == "cloud_queued" and cloud.ran == []  # never inline in the dispatcher
    assigned = svc.store.get(task.task_id)
    assert assigned.status is TaskStatus.ASSIGNED and assigned.route == "cloud" and assigned.attempt == 1
    assert svc.cloud_queue.sent == [(task.task_id, 1)]
    assert [t[:2] for t in svc.queue.timeouts] == [(task.task_id, 1)]  # the deadline still guards it
    assert svc.events.types() == ["TaskSubmitted", "TaskAssigned"]

    assert svc.run_cloud(task.task_id, 1) == "completed"
    done = svc.store.get(task.task_id)
    assert done.status is TaskStatus.COMPLETED and done.output.text == "from the cloud" and cloud.ran == [tid]
    assert svc.events.types()[-2:] == ["TaskCompleted", "UsageRecorded"]
    # A redelivered hand-off of a finished attempt, or one for another attempt: nothing runs.
    assert svc.run_cloud(task.task_id, 1) == "stale" and svc.run_cloud(task.task_id, 2) == "stale"
    assert cloud.ran == [tid]


def test_a_re_sent_hand_off_runs_the_endpoint_once(claims):
    svc, cloud = dispatcher(claims)
    task = svc.submit(spec(constraints={"prefer": "cloud"}), account="acct", dispatch_inline=True)
    # The dispatch message comes back (its batch's events were not taken): the effects are replayed.
    assert svc.dispatch(task.task_id, redelivered=True).action == "skipped"
    assert svc.cloud_queue.sent == [(task.task_id, 1), (task.task_id, 1)]
    assert svc.events.types().count("TaskAssigned") == 2  # same event id: one transition
    assert len({e.event_id for e in svc.events.events if e.detail_type == "TaskAssigned"}) == 1
    # Two workers got the two messages; the first claimed the assignment while still running it.
    assert claims.claim(task.task_id, 1, 60)
    assert svc.run_cloud(task.task_id, 1) == "duplicate" and cloud.ran == []
    assert svc.store.get(task.task_id).status is TaskStatus.ASSIGNED  # its own run (or timeout) decides


def test_a_plain_duplicate_dispatch_message_replays_nothing(claims):
    svc, cloud = dispatcher(claims)
    task = svc.submit(spec(), account="acct", dispatch_inline=True)  # edge
    assert task.status is TaskStatus.ASSIGNED and task.route == "edge"
    sent, timeouts, events = len(svc.iot.sent), len(svc.queue.timeouts), len(svc.events.events)
    assert svc.dispatch(task.task_id).action == "skipped"
    assert (len(svc.iot.sent), len(svc.queue.timeouts), len(svc.events.events)) == (sent, timeouts, events)
    # Redelivered: the event and the timeout again (idempotent), never the device's task a second time.
    assert svc.dispatch(task.task_id, redelivered=True).action == "skipped"
    assert len(svc.iot.sent) == sent and len(svc.queue.timeouts) == timeouts + 1
    assert [e.event_id for e in svc.events.events[events:]] == [f"{task.task_id}:assigned:1"]


def test_a_worker_without_an_endpoint_fails_the_attempt_instead_of_waiting_for_its_deadline(claims):
    svc, cloud = dispatcher(claims, models=frozenset())
    task = svc.submit(spec(constraints={"prefer": "cloud"}), account="acct", dispatch_inline=True)
    assert task.status is TaskStatus.ASSIGNED
    svc.cloud = None  # the worker's process: no endpoint configured
    assert svc.run_cloud(task.task_id, 1) == "failed"
    done = svc.store.get(task.task_id)
    assert done.status is TaskStatus.FAILED and "cloud_unavailable" in done.error.message


def test_redelivered_dispatch_of_a_failed_task_replays_its_terminal_events(claims):
    svc, cloud = dispatcher(claims, models=frozenset())
    task = svc.submit(spec(model="nobody-serves-it"), account="acct", dispatch_inline=True)
    assert task.status is TaskStatus.FAILED
    n = len(svc.events.events)
    svc.dispatch(task.task_id, redelivered=True)
    replayed = svc.events.events[n:]
    assert [e.detail_type for e in replayed] == ["TaskFailed", "UsageRecorded"]
    assert replayed[1].event_id == f"usage:{task.task_id}"
