"""The edge-or-cloud policy of ``TaskService`` on in-memory ports (pure unit tests, fast): when a
task goes straight to the cloud, why (the decision record), and what the cloud attempt emits."""

from __future__ import annotations

import pytest

from ig3.tasks.model import TaskSpec, TaskStatus
from ig3.wire import TaskOutput, Usage
from tests.tasks.fakes import make_service


class Cloud:
    """A CloudBackend that records what it ran (the real one is tested against the local endpoint)."""

    name = "sagemaker/test"
    kinds = frozenset({"chat"})

    def __init__(self, models=("m",), fail: bool = False):
        self.models = set(models)
        self.fail = fail
        self.ran: list[str] = []

    def serves(self, model):
        return model in self.models

    def run(self, task):
        self.ran.append(task.task_id)
        if self.fail:
            raise TimeoutError("endpoint timed out")
        return TaskOutput(text="from the cloud", finish_reason="stop"), Usage(
            prompt_tokens=3, completion_tokens=2, duration_ms=1234.6
        )


class Speed:
    def __init__(self, tps):
        self.tps = tps
        self.asked: list[tuple[str, str | None]] = []

    def best_tokens_per_s(self, model, region=None):
        self.asked.append((model, region))
        return self.tps


def spec(**kw):
    body = {"kind": "chat", "model": "m", "input": {"messages": [{"role": "user", "content": "hi"}]}, **kw}
    return TaskSpec.model_validate(body)


def submit(svc, **kw):
    return svc.submit(spec(**kw), account="acct", dispatch_inline=True)


def test_edge_first_when_a_device_can_do_it():
    cloud = Cloud()
    svc = make_service(cloud=cloud)
    t = submit(svc)
    assert t.status is TaskStatus.ASSIGNED and t.route == "edge" and cloud.ran == []


@pytest.mark.parametrize(
    "kw,why",
    [
        ({"constraints": {"prefer": "cloud"}}, "prefer=cloud"),
        ({"model": "only-in-the-cloud"}, "no live device serves model 'only-in-the-cloud'"),
    ],
)
def test_straight_to_the_cloud(kw, why):
    cloud = Cloud(models=("m", "only-in-the-cloud"))
    svc = make_service(cloud=cloud)
    t = submit(svc, **kw)
    assert t.status is TaskStatus.COMPLETED and t.route == "cloud" and t.edge_attempts == 0
    assert t.device == "cloud:sagemaker/test" and t.decision["why"] == why
    assert t.output.text == "from the cloud" and svc.iot.sent == []


def test_slo_beyond_every_device_goes_to_the_cloud_and_within_reach_stays_on_edge():
    cloud = Cloud()
    svc = make_service(cloud=cloud)
    svc.fleet_speed = Speed(25.0)
    fast = submit(svc, constraints={"min_tokens_per_s": 100, "region": "eu"})
    assert (
        fast.route == "cloud"
        and fast.decision["why"] == "SLO min_tokens_per_s=100: the fastest free device does 25.0"
    )
    assert svc.fleet_speed.asked == [("m", "eu")]
    ok = submit(svc, constraints={"min_tokens_per_s": 20})
    assert ok.route == "edge" and ok.status is TaskStatus.ASSIGNED
    svc.fleet_speed = Speed(None)
    unknown = submit(svc, constraints={"min_tokens_per_s": 1})
    assert unknown.route == "cloud" and "no free device reports a speed" in unknown.decision["why"]


def test_an_slo_no_cloud_can_take_is_best_effort_on_the_edge():
    svc = make_service(cloud=None)
    svc.fleet_speed = Speed(5.0)
    t = submit(svc, constraints={"min_tokens_per_s": 100})
    assert t.route == "edge" and t.status is TaskStatus.ASSIGNED


def test_prefer_edge_never_goes_to_the_cloud():
    cloud = Cloud()
    svc = make_service({"d1": 1}, cloud=cloud)
    svc.fleet_speed = Speed(1.0)
    t = submit(svc, constraints={"prefer": "edge", "min_tokens_per_s": 100})
    assert t.route == "edge" and cloud.ran == []


def test_kinds_the_endpoint_cannot_run_stay_off_the_cloud():
    cloud = Cloud()
    svc = make_service(cloud=cloud, models=frozenset())
    t = submit(svc, kind="completion", input={"prompt": "p"})
    assert t.status is TaskStatus.FAILED and t.error.code == "no_capacity" and cloud.ran == []
    t2 = submit(svc, kind="completion", input={"prompt": "p"}, constraints={"prefer": "cloud"})
    assert (
        t2.status is TaskStatus.FAILED
        and "prefer=cloud but no cloud endpoint serves completion" in t2.error.message
    )


def test_full_fleet_spills_to_the_cloud_with_the_reason():
    cloud = Cloud()
    svc = make_service({"d1": 1}, cloud=cloud)
    first = submit(svc)
    second = submit(svc)
    assert first.route == "edge" and second.route == "cloud"
    assert second.decision["why"] == "no device had a free slot for model 'm'"


def test_cloud_usage_is_billed_in_whole_milliseconds_of_endpoint_time():
    svc = make_service(cloud=Cloud())
    t = submit(svc, constraints={"prefer": "cloud"})
    usage = [e for e in svc.events.events if e.detail_type == "UsageRecorded"]
    assert len(usage) == 1 and usage[0].detail["route"] == "cloud"
    assert usage[0].detail["duration_ms"] == 1235 and usage[0].detail["sagemaker_ms"] == 1235
    assert usage[0].event_id == f"usage:{t.task_id}"


def test_a_failed_cloud_attempt_is_the_last_one():
    cloud = Cloud(fail=True)
    svc = make_service(cloud=cloud, models=frozenset())
    t = submit(svc, model="m", constraints={"prefer": "cloud"})
    assert t.status is TaskStatus.FAILED and t.error.code == "attempts_exhausted" and cloud.ran == [t.task_id]
    assert svc.events.types().count("TaskAssigned") == 1 and "TaskFailed" in svc.events.types()
