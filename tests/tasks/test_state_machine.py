"""The task state machine and the services over it, with in-memory ports (no sockets).

The property test drives arbitrary interleavings of results (ok / error / released, from the
assignee or from other devices, duplicated, late), timeouts and re-dispatches and checks the
invariants: one terminal state, reached once; never completed twice; slots always released.
"""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ig3.config import DispatchSettings
from ig3.tasks import state
from ig3.tasks.model import Task, TaskSpec, TaskStatus
from ig3.wire import DeviceResult, ResultError, TaskInput, TaskOutput, Usage
from tests.tasks.fakes import make_service

SPEC = TaskSpec(kind="chat", model="m", input=TaskInput(messages=[{"role": "user", "content": "hi"}]))


def _task(**kw) -> Task:
    return Task(task_id="tsk_x", kind="chat", model="m", input=SPEC.input, created_at=0, updated_at=0, **kw)


def ok(task_id, attempt, thing, text="answer"):
    return DeviceResult(task_id=task_id, attempt=attempt, thing=thing, status="ok", output=TaskOutput(text=text),
                        usage=Usage(prompt_tokens=3, completion_tokens=2))


def err(task_id, attempt, thing, code="internal", retryable=True):
    return DeviceResult(task_id=task_id, attempt=attempt, thing=thing, status="error",
                        error=ResultError(code=code, message="boom", retryable=retryable))


def test_spec_rejects_input_that_does_not_match_kind():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        TaskSpec(kind="chat", model="m", input=TaskInput(prompt="x"))
    with pytest.raises(ValidationError):
        TaskSpec(kind="embedding", model="m", input=TaskInput(texts=[]))


def test_assign_only_from_pending_and_counts_attempts():
    t = state.assign(_task(), route="edge", device="d1", deadline=10, now=1)
    assert (t.status, t.attempt, t.edge_attempts, t.version) == (TaskStatus.ASSIGNED, 1, 1, 1)
    try:
        state.assign(t, route="edge", device="d2", deadline=10, now=1)
    except state.InvalidTransition:
        pass
    else:
        raise AssertionError("assigned twice")


def test_complete_requires_the_assignee_and_the_current_attempt():
    t = state.assign(_task(), route="edge", device="d1", deadline=10, now=1)
    for attempt, device in ((2, "d1"), (1, "d2")):
        try:
            state.complete(t, attempt=attempt, device=device, output=None, usage=None, now=2)
        except state.InvalidTransition:
            continue
        raise AssertionError("foreign result completed the task")
    done = state.complete(t, attempt=1, device="d1", output=TaskOutput(text="a"), usage=None, now=2)
    assert done.status is TaskStatus.COMPLETED


def test_failures_walk_edge_then_cloud_then_failed():
    s = DispatchSettings(edge_attempts=2, cloud_attempts=1)
    t = _task()
    e = ResultError(code="internal", message="x", retryable=True)
    t = state.assign(t, route="edge", device="d1", deadline=1, now=0)
    f = state.fail_attempt(t, attempt=1, device="d1", error=e, settings=s, now=0)
    assert f.outcome is state.Outcome.REQUEUED and f.task.excluded == ["d1"]
    assert state.choose_route(f.task, s) == "edge"
    t = state.assign(f.task, route="edge", device="d2", deadline=1, now=0)
    f = state.fail_attempt(t, attempt=2, device="d2", error=e, settings=s, now=0)
    assert state.choose_route(f.task, s) == "cloud"
    t = state.assign(f.task, route="cloud", device="cloud:x", deadline=1, now=0)
    f = state.fail_attempt(t, attempt=3, device="cloud:x", error=e, settings=s, now=0)
    assert f.outcome is state.Outcome.FAILED and f.task.error.code == "attempts_exhausted"


def test_non_retryable_error_fails_at_once():
    s = DispatchSettings()
    t = state.assign(_task(), route="edge", device="d1", deadline=1, now=0)
    f = state.fail_attempt(t, attempt=1, device="d1", error=ResultError(code="bad_task", message="x"), settings=s, now=0)
    assert f.outcome is state.Outcome.FAILED and f.task.error.code == "bad_task"


def test_backoff_is_capped_and_jittered():
    s = DispatchSettings(backoff_base_s=0.5, backoff_max_s=4)
    assert state.backoff_s(1, s, 0.999) < 0.5
    assert state.backoff_s(10, s, 0.999) <= 4
    assert state.backoff_s(3, s, 0.0) == 0


def test_service_loop_assign_then_complete_publishes_and_announces():
    svc = make_service({"d1": 1})
    task = svc.submit(SPEC, account="0xabc")
    assert svc.queue.dispatches == [(task.task_id, 0)]
    out = svc.dispatch(task.task_id)
    assert out.action == "assigned" and out.task.device == "d1"
    topic, payload = svc.iot.sent[0]
    assert topic == "ig3/v1/devices/d1/tasks" and json.loads(payload)["attempt"] == 1
    assert svc.queue.timeouts and svc.queue.timeouts[0][1] == 1
    assert svc.handle_result(ok(task.task_id, 1, "d1")) == "completed"
    assert svc.get(task.task_id).status is TaskStatus.COMPLETED
    assert svc.placer.slots["d1"] == set()
    assert [t.status for t in svc.notifier.announced] == [TaskStatus.COMPLETED]
    assert svc.events.types() == ["TaskSubmitted", "TaskAssigned", "TaskCompleted", "UsageRecorded"]
    usage = svc.events.events[-1].detail
    assert (usage["status"], usage["prompt_tokens"], usage["completion_tokens"]) == ("completed", 3, 2)
    # duplicate delivery: nothing new is written, effects replay idempotently (same event ids)
    assert svc.handle_result(ok(task.task_id, 1, "d1")) == "duplicate"
    ids = [e.event_id for e in svc.events.events]
    assert len(set(ids)) == 4


def test_idempotency_key_returns_the_same_task_per_caller():
    svc = make_service()
    a = svc.submit(SPEC, account="0xabc", idempotency_key="k1")
    b = svc.submit(SPEC, account="0xabc", idempotency_key="k1")
    assert a.task_id == b.task_id and len(svc.queue.dispatches) == 1
    c = svc.submit(SPEC, account="0xdef", idempotency_key="k1")  # keys are scoped to the caller
    assert c.task_id != a.task_id and len(svc.queue.dispatches) == 2


def test_unknown_model_fails_without_retry():
    svc = make_service()
    spec = SPEC.model_copy(update={"model": "nope"})
    task = svc.submit(spec, account="a")
    out = svc.dispatch(task.task_id)
    assert out.action == "failed" and out.task.error.code == "no_capacity"


def test_busy_fleet_waits_instead_of_failing():
    svc = make_service({"d1": 1})
    t1 = svc.submit(SPEC, account="a")
    t2 = svc.submit(SPEC, account="a")
    assert svc.dispatch(t1.task_id).action == "assigned"
    assert svc.dispatch(t2.task_id).action == "waiting"


def test_timeout_requeues_elsewhere_and_late_result_is_ignored():
    now = [1000.0]
    svc = make_service({"d1": 1, "d2": 1}, clock=lambda: now[0])
    task = svc.submit(SPEC, account="a")
    svc.dispatch(task.task_id)
    deadline = svc.get(task.task_id).deadline
    assert svc.handle_timeout(task.task_id, 1, deadline) == "chained"
    now[0] = deadline + 1
    assert svc.handle_timeout(task.task_id, 1, deadline) == "requeued"
    assert svc.placer.slots["d1"] == set()
    out = svc.dispatch(task.task_id)
    assert out.task.device == "d2" and out.task.attempt == 2
    assert svc.handle_result(ok(task.task_id, 1, "d1")) == "stale"  # the late answer of attempt 1
    assert svc.handle_result(ok(task.task_id, 2, "d2")) == "completed"


class FailingVerifier:
    def verify(self, result):
        return result.thing != "a-liar"


def test_bad_signature_from_assignee_fails_the_attempt():
    svc = make_service({"a-liar": 1, "d2": 1}, verifier=FailingVerifier())
    task = svc.submit(SPEC, account="a")
    svc.dispatch(task.task_id)
    assert svc.get(task.task_id).device == "a-liar"
    assert svc.handle_result(ok(task.task_id, 1, "a-liar")) == "rejected"
    t = svc.get(task.task_id)
    assert t.status is TaskStatus.PENDING and "a-liar" in t.excluded
    assert ("a-liar", False) in svc.placer.outcomes


class Cloud:
    name = "sm"

    def __init__(self, fail=False):
        self.fail, self.calls = fail, 0

    def serves(self, model):
        return True

    def run(self, task):
        self.calls += 1
        if self.fail:
            raise TimeoutError("endpoint")
        return TaskOutput(text="cloud answer"), Usage(prompt_tokens=1, completion_tokens=1)


def test_cloud_fallback_after_edge_attempts():
    svc = make_service({"d1": 1}, cloud=Cloud(), settings=DispatchSettings(edge_attempts=1, cloud_attempts=1))
    task = svc.submit(SPEC, account="a")
    svc.dispatch(task.task_id)
    assert svc.handle_result(err(task.task_id, 1, "d1")) == "requeued"
    out = svc.dispatch(task.task_id)
    assert out.action == "cloud" and out.task.status is TaskStatus.COMPLETED and out.task.route == "cloud"


EVENTS = st.lists(st.tuples(st.sampled_from(["ok", "err", "fatal", "released", "timeout", "dispatch", "forged"]),
                            st.integers(min_value=1, max_value=6), st.sampled_from(["d1", "d2", "d3", "x"])),
                  min_size=1, max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS)
def test_any_interleaving_reaches_one_terminal_state_once(events):
    now = [0.0]
    svc = make_service({"d1": 1, "d2": 1, "d3": 1}, clock=lambda: now[0], cloud=Cloud(fail=True))
    task = svc.submit(SPEC, account="a")
    tid = task.task_id
    for kind, attempt, thing in events:
        now[0] += 1
        cur = svc.get(tid)
        if kind == "dispatch":
            svc.dispatch(tid)
        elif kind == "timeout":
            svc.handle_timeout(tid, attempt, deadline=now[0] - 1)
        elif kind == "forged":
            svc.handle_result(ok(tid, attempt, "x"))
        else:
            # half the time the event comes from the real assignee with the real attempt
            if cur.device and attempt % 2 == 0:
                attempt, thing = cur.attempt, cur.device
            if kind == "ok":
                svc.handle_result(ok(tid, attempt, thing))
            elif kind == "err":
                svc.handle_result(err(tid, attempt, thing))
            elif kind == "fatal":
                svc.handle_result(err(tid, attempt, thing, code="bad_task", retryable=False))
            else:
                svc.handle_result(DeviceResult(task_id=tid, attempt=attempt, thing=thing, status="released"))
    final = svc.get(tid)
    terminal_events = [e for e in svc.events.events if e.detail_type in ("TaskCompleted", "TaskFailed")]
    # once terminal, the record never changes state again and one terminal event id exists
    assert len({e.event_id for e in terminal_events}) <= 1
    if final.terminal:
        assert {e.detail_type for e in terminal_events} == {"TaskCompleted" if final.status is TaskStatus.COMPLETED
                                                            else "TaskFailed"}
        assert all(not slots for slots in svc.placer.slots.values()), "a slot leaked"
    usage = [e for e in svc.events.events if e.detail_type == "UsageRecorded"]
    # exactly one usage event per terminal task: "completed" is settled, "failed" only releases the hold
    assert len({e.event_id for e in usage}) == (1 if final.terminal else 0)
    assert {e.detail["status"] for e in usage} <= {"completed" if final.status is TaskStatus.COMPLETED else "failed"}
    # at most one device ever holds the task's slot
    assert sum(tid in s for s in svc.placer.slots.values()) <= (1 if final.status is TaskStatus.ASSIGNED else 0)


class Budget:
    def __init__(self, allow=True):
        self.allow, self.held, self.released = allow, [], []

    def hold(self, task, *, key_id, key_budget):
        from ig3.errors import PaymentRequired

        if not self.allow:
            raise PaymentRequired("insufficient balance")
        self.held.append((task.task_id, key_id, key_budget))

    def release(self, task_id):
        self.released.append(task_id)


def test_no_balance_is_402_and_nothing_is_written():
    import pytest

    from ig3.errors import PaymentRequired

    svc = make_service()
    svc.budget = Budget(allow=False)
    with pytest.raises(PaymentRequired):
        svc.submit(SPEC, account="a", idempotency_key="k")
    assert svc.queue.dispatches == [] and svc.events.events == []
    from ig3.tasks.service import new_task_id

    assert svc.store.get(new_task_id("a", "k")) is None


def test_queue_failure_removes_the_task_and_releases_its_hold():
    import pytest

    from ig3.errors import Unavailable

    svc = make_service()
    svc.budget = Budget()

    def broken(task_id, delay_s=0):
        raise ConnectionError("sqs down")

    svc.queue.send_dispatch = broken
    with pytest.raises(Unavailable):
        svc.submit(SPEC, account="a", idempotency_key="k2", key_id="key1", key_budget=100)
    tid = svc.budget.held[0][0]
    assert svc.budget.held == [(tid, "key1", 100)] and svc.budget.released == [tid]
    assert svc.store.get(tid) is None


def test_failed_task_emits_a_failed_usage_event_so_its_hold_is_released():
    svc = make_service()
    task = svc.submit(SPEC.model_copy(update={"model": "unknown"}), account="a")
    svc.dispatch(task.task_id)
    usage = [e for e in svc.events.events if e.detail_type == "UsageRecorded"]
    assert len(usage) == 1 and usage[0].detail["status"] == "failed" and usage[0].detail["completion_tokens"] == 0
