"""The dispatch path end to end through its functions: moto server (DynamoDB, SQS, EventBridge),
real Redis with the real scheduler, real signatures, a real llama.cpp SageMaker stand-in for the
cloud fallback, and simulated devices that answer, fail, hang, vanish, send garbage or forge.

Each scenario puts a device online *before* the other one, so which device gets the first
attempt is known and the re-queue can be asserted — the scheduler's own draw is tested in
``tests/scheduler``.
"""

from __future__ import annotations

import json
import time

import pytest

from ig3.billing.models import UsageRecorded
from ig3.tasks.model import TaskStatus
from tests.dispatch.harness import SimDevice

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def types(events):
    return [e["detail-type"] for e in events]


def test_edge_task_completes_with_every_transition_on_eventbridge(harness):
    h = harness
    a = h.add(SimDevice("sim-ok-a"))
    events_q = h.capture_events({"account": [h.account]})
    task = h.submit()
    h.run(h.terminal(task.task_id))

    done = h.task(task.task_id)
    assert done.status is TaskStatus.COMPLETED and done.route == "edge" and done.device == a.thing
    assert done.output.text == f"answer from {a.thing}" and done.attempt == 1
    assert done.decision["winner"] == a.thing and done.decision["candidates"] >= 1
    # The slot is back: the device is fully free again.
    assert h.live.get(a.thing)["reserved"] == 0
    events = h.drain_events(events_q)
    assert sorted(types(events)) == ["TaskAssigned", "TaskCompleted", "TaskSubmitted", "UsageRecorded"]
    assert all(e["source"] == "ig3" and e["detail"]["event_id"] for e in events)
    usage = next(e for e in events if e["detail-type"] == "UsageRecorded")["detail"]
    # The billing consumer accepts exactly what the dispatcher publishes.
    record = UsageRecorded.model_validate(usage)
    assert record.route == "edge" and record.device == a.thing and record.completion_tokens == 4
    assert record.duration_ms == 12 and record.sagemaker_ms is None


def test_failing_device_is_excluded_and_the_task_requeued_elsewhere(harness):
    h = harness
    bad = h.add(SimDevice("sim-fail-a", behaviour="fail"))
    events_q = h.capture_events({"account": [h.account]})
    task = h.submit()
    h.pump("tasks")  # only the failing device is online: it gets attempt 1
    assert [t.id for t in bad.received] == [task.task_id]
    good = h.add(SimDevice("sim-ok-b"))
    h.run(h.terminal(task.task_id))

    done = h.task(task.task_id)
    assert done.status is TaskStatus.COMPLETED and done.device == good.thing and done.attempt == 2
    assert done.excluded == [bad.thing] and len(bad.received) == 1
    assert h.live.get(bad.thing)["reserved"] == 0 and h.live.get(good.thing)["reserved"] == 0
    assert h.live.reliability(bad.thing) < h.live.reliability(good.thing)
    events = h.drain_events(events_q)
    requeued = [e["detail"] for e in events if e["detail-type"] == "TaskRequeued"]
    assert (
        len(requeued) == 1
        and requeued[0]["failed_device"] == bad.thing
        and requeued[0]["error"] == "internal"
    )
    assert types(events).count("TaskAssigned") == 2


def test_hanging_device_times_out_and_the_task_moves_on(harness):
    h = harness
    hung = h.add(SimDevice("sim-hang-a", behaviour="hang"))
    task = h.submit(constraints={"deadline_s": 1})
    h.pump("tasks")
    assert [t.id for t in hung.received] == [task.task_id]
    assert h.task(task.task_id).status is TaskStatus.ASSIGNED
    good = h.add(SimDevice("sim-ok-b"))
    t0 = time.time()
    h.run(h.terminal(task.task_id), timeout_s=30)

    done = h.task(task.task_id)
    # Re-queued by the delayed timeout message (deadline + 1 s), not earlier.
    assert time.time() - t0 >= 1.0
    assert done.status is TaskStatus.COMPLETED and done.device == good.thing and done.excluded == [hung.thing]
    assert h.live.get(hung.thing)["reserved"] == 0  # the hung device's slot was released
    # The stale timeout of attempt 2 (if it ever fires) and a late answer change nothing.
    assert h.svc.handle_timeout(task.task_id, 1, time.time() - 1) == "stale"


def test_disappeared_device_goes_offline_and_is_not_chosen(harness):
    h = harness
    gone = SimDevice("sim-gone-a", tokens_per_s=500.0)  # the best device, were it alive
    offline_q = h.capture_events({"device_id": [gone.thing]}, ["DeviceOffline"])
    # Its last heartbeat reached the cloud a minute ago (the live TTL is 30 s).
    h.live.apply_heartbeats([gone.heartbeat(ts=time.time() - 60)], now=time.time() - 60)
    h.net.devices[gone.thing] = gone
    alive = h.add(
        SimDevice("sim-ok-b", tokens_per_s=5.0, capacity=8)
    )  # the telemetry function runs expiry too
    offline = h.drain_events(offline_q)
    assert [e["detail-type"] for e in offline] == ["DeviceOffline"]
    assert h.live.get(gone.thing) is None

    tasks = [h.submit() for _ in range(4)]
    h.run(lambda: all(h.terminal(t.task_id)() for t in tasks))
    assert gone.received == []
    assert {h.task(t.task_id).device for t in tasks} == {alive.thing}


def test_garbage_result_is_dropped_and_the_deadline_recovers_the_task(harness):
    h = harness
    junk = h.add(SimDevice("sim-junk-a", behaviour="garbage"))
    task = h.submit(constraints={"deadline_s": 1})
    h.pump("tasks")
    assert h.pump("results") == 1  # the malformed result reached the results function...
    assert h.batch_failures["results"] == 0  # ...which dropped it instead of poisoning the queue
    assert h.task(task.task_id).status is TaskStatus.ASSIGNED and h.task(task.task_id).device == junk.thing
    good = h.add(SimDevice("sim-ok-b"))
    h.run(h.terminal(task.task_id), timeout_s=30)
    done = h.task(task.task_id)
    assert done.status is TaskStatus.COMPLETED and done.device == good.thing and done.excluded == [junk.thing]


def test_forged_signature_is_rejected_counted_and_the_task_requeued(harness, capsys):
    h = harness
    forger = h.add(SimDevice("sim-forge-a", behaviour="forge"))
    events_q = h.capture_events({"account": [h.account]}, ["TaskRequeued"])
    before = h.live.reliability(forger.thing)
    # About the edge only: without the cloud fallback a missed placement waits and is retried instead
    # of going to SageMaker. (In CI the first placement on the just-heartbeated device was missed
    # about one run in three and the task went to the cloud; the cause is not found yet — issue #5.)
    h.svc.cloud = None
    capsys.readouterr()
    task = h.submit()
    h.run(lambda: h.task(task.task_id).excluded == [forger.thing])
    # The results function's metrics (CloudWatch EMF on stdout, as in Lambda) count the rejection.
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert any(m.get("ResultsRejected") for m in emf), emf
    after = h.live.reliability(forger.thing)
    assert after < before  # counted against the device
    current = h.task(task.task_id)
    assert current.status is TaskStatus.PENDING and current.excluded == [forger.thing]
    assert current.error.code == "bad_signature"
    good = h.add(SimDevice("sim-ok-b"))
    h.run(h.terminal(task.task_id))
    done = h.task(task.task_id)
    assert done.status is TaskStatus.COMPLETED and done.device == good.thing
    assert done.output.text == f"answer from {good.thing}"
    requeued = h.drain_events(events_q)
    assert [e["detail"]["error"] for e in requeued] == ["bad_signature"]


@pytest.mark.timeout(400)  # the first one includes LiteLLM's import (a minute on a loaded box)
def test_cloud_fallback_after_the_edge_attempts_streams_and_bills_sagemaker_time(harness, sagemaker):
    h = harness
    h.svc.settings = h.svc.settings.__class__(
        edge_attempts=2, cloud_attempts=1, default_deadline_s=30, backoff_base_s=0.05, backoff_max_s=0.1
    )
    a = h.add(SimDevice("sim-fail-a", behaviour="fail"))
    b = h.add(SimDevice("sim-fail-b", behaviour="fail"))
    events_q = h.capture_events({"account": [h.account]})
    streams_before = sagemaker.invocations["invocations-response-stream"]
    task = h.submit(stream=True, limits={"max_tokens": 6, "temperature": 0})
    h.run(h.terminal(task.task_id), timeout_s=100)  # includes LiteLLM's first import

    done = h.task(task.task_id)
    assert done.status is TaskStatus.COMPLETED, done.error
    assert done.route == "cloud" and done.device == f"cloud:sagemaker/{sagemaker.endpoint}"
    assert sorted(done.excluded) == sorted([a.thing, b.thing]) and done.attempt == 3
    assert done.decision["why"] == "edge attempts spent (2)"
    # The dispatcher handed the attempt to the cloud worker (one message, one run), not ran it inline.
    assert h.delivered["cloud"] == 1 and h.batch_failures["cloud"] == 0
    assert 1 <= done.usage.completion_tokens <= 6 and done.usage.prompt_tokens > 0
    assert sagemaker.invocations["invocations-response-stream"] == streams_before + 1
    # The endpoint's stream was relayed on the task's stream topic, ending with a final chunk.
    chunks = h.net.stream(task.task_id)
    assert chunks and chunks[-1]["final"] is True and chunks[-1]["attempt"] == 3
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["delta"] for c in chunks) == done.output.text
    events = h.drain_events(events_q)
    assert types(events).count("TaskRequeued") == 2 and types(events).count("TaskAssigned") == 3
    usage = UsageRecorded.model_validate(
        next(e for e in events if e["detail-type"] == "UsageRecorded")["detail"]
    )
    assert usage.route == "cloud" and usage.sagemaker_ms is not None and usage.sagemaker_ms > 0


@pytest.mark.timeout(400)  # the first one includes LiteLLM's import (a minute on a loaded box)
def test_straight_to_cloud_when_no_device_has_the_model(harness, sagemaker):
    h = harness
    other = h.add(SimDevice("sim-other-a", models=("some-other-model",)))
    task = h.submit()
    h.run(h.terminal(task.task_id), timeout_s=100)
    done = h.task(task.task_id)
    assert done.status is TaskStatus.COMPLETED and done.route == "cloud" and done.edge_attempts == 0
    assert done.decision["why"] == "no live device serves model 'tiny-llama'"
    assert other.received == [] and done.output.text is not None


@pytest.mark.timeout(400)  # the first one includes LiteLLM's import (a minute on a loaded box)
def test_straight_to_cloud_on_prefer_cloud_and_on_an_slo_no_device_meets(harness):
    h = harness
    dev = h.add(SimDevice("sim-ok-a", tokens_per_s=20.0))
    preferred = h.submit(constraints={"prefer": "cloud"})
    too_fast = h.submit(constraints={"min_tokens_per_s": 500})
    met = h.submit(constraints={"min_tokens_per_s": 5})
    h.run(lambda: all(h.terminal(t.task_id)() for t in (preferred, too_fast, met)), timeout_s=100)

    p, f, m = (h.task(t.task_id) for t in (preferred, too_fast, met))
    assert p.route == "cloud" and p.decision["why"] == "prefer=cloud" and p.status is TaskStatus.COMPLETED
    assert f.route == "cloud" and f.status is TaskStatus.COMPLETED
    assert f.decision["why"] == "SLO min_tokens_per_s=500: the fastest free device does 20.0"
    assert m.route == "edge" and m.device == dev.thing and m.status is TaskStatus.COMPLETED
    assert [t.id for t in dev.received] == [met.task_id]


def test_prefer_cloud_for_a_kind_the_endpoint_cannot_run_fails_with_the_reason(harness):
    h = harness
    dev = h.add(SimDevice("sim-ok-a"))
    events_q = h.capture_events({"account": [h.account]}, ["TaskSubmitted", "TaskAssigned", "TaskFailed"])
    task = h.submit(kind="completion", input={"prompt": "once upon a time"}, constraints={"prefer": "cloud"})
    h.run(h.terminal(task.task_id))
    done = h.task(task.task_id)
    assert done.status is TaskStatus.FAILED and done.error.code == "no_capacity"
    assert "prefer=cloud but no cloud endpoint serves completion" in done.error.message
    assert dev.received == []
    failed = h.drain_events(events_q)
    assert sorted(types(failed)) == ["TaskFailed", "TaskSubmitted"]
    detail = next(e["detail"] for e in failed if e["detail-type"] == "TaskFailed")
    assert detail["task_id"] == task.task_id and detail["status"] == "FAILED"
