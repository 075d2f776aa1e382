"""Network aggregates on a real Redis: events in (as EventBridge delivers them to SQS), summary out."""
from __future__ import annotations

import time

import orjson
import pytest
import redis

from ig3.pubsub.aggregate import NetworkAggregates, parse_eventbridge, summarize
from ig3.pubsub.authz import NETWORK_SUMMARY_TOPIC
from ig3.pubsub.feed import NetworkFeed
from ig3.pubsub.summary import MAX_DEVICE_ROWS, build_summary, latency_bucket, percentile_from_histogram
from ig3.scheduler import LiveState
from ig3.wire import DeviceLoad, Heartbeat, Location, ModelInfo

NOW = 1_800_000_000.0


def envelope(kind: str, detail: dict, *, envelope_id: str = "e-1") -> dict:
    return {"body": orjson.dumps({"version": "0", "id": envelope_id, "detail-type": kind, "source": "ig3",
                                  "time": "2027-01-15T08:00:00Z", "detail": detail}).decode()}


def task_event(kind: str, task: str, ts: float, **extra) -> dict:
    suffix = {"TaskSubmitted": "submitted", "TaskAssigned": f"assigned:{extra.get('attempt', 1)}",
              "TaskCompleted": "completed", "TaskFailed": "failed", "TaskRequeued": f"requeued:{extra.get('attempt', 1)}"}
    detail = {"task_id": task, "status": extra.pop("status", None), "model": "m1", "kind": "chat",
              "account": "0xSECRETACCOUNT", "event_id": f"{task}:{suffix[kind]}", "ts": ts, **extra}
    return envelope(kind, detail, envelope_id=f"{task}-{kind}")


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def live(r, redis_prefix):
    return LiveState(r, prefix=redis_prefix, ttl_s=30)


@pytest.fixture
def agg(r, redis_prefix):
    return NetworkAggregates(r, prefix=redis_prefix)


def beat(thing, *, ts=NOW, cap=2, in_flight=0, region="eu-west", lat=50.0, lon=8.0, models=("m1",)):
    return Heartbeat(thing=thing, ts=ts, region=region, location=Location(lat=lat, lon=lon),
                     load=DeviceLoad(capacity=cap, in_flight=in_flight),
                     models=[ModelInfo(name=m, ctx=2048, sha256=f"sha-{m}") for m in models])


def apply(agg, records):
    return agg.apply([e for e in (parse_eventbridge(x["body"]) for x in records) if e])


def test_task_lifecycle_counts_latency_and_feed(agg, live):
    live.apply_heartbeats([beat("dev-a", in_flight=1), beat("dev-b", region="us-east", lat=40, lon=-74, cap=4,
                                                              models=("m1", "m2"))], now=NOW)
    records = [
        task_event("TaskSubmitted", "t1", NOW - 2.0, status="PENDING"),
        task_event("TaskAssigned", "t1", NOW - 1.9, status="ASSIGNED", route="edge", device="dev-a",
                   decision={"route": "edge", "winner": "dev-a", "why": "best score (load 0.0, 12 km)"}),
        task_event("TaskCompleted", "t1", NOW - 1.25, status="COMPLETED", route="edge", device="dev-a"),
        task_event("TaskSubmitted", "t2", NOW - 1.0, status="PENDING"),
        task_event("TaskFailed", "t2", NOW - 0.5, status="FAILED", route="cloud", device="cloud:sm"),
    ]
    assert apply(agg, records) == 5
    s = summarize(agg, live, NOW)
    assert s["tasks"] == {"submitted": 2, "assigned": 1, "completed": 1, "failed": 1, "requeued": 0}
    assert s["latency"]["mean_ms"] == 750 and s["latency"]["samples"] == 1  # failures are not latency samples
    assert s["latency"]["p50_ms"] == 1000
    assert s["failures"]["failed_total"] == 1 and s["failures"]["failed_window"] == 1
    done = next(f for f in s["feed"] if f["type"] == "TaskCompleted")
    assert done["latency_ms"] == 750 and done["route"] == "edge" and done["device"] == "dev-a"
    assigned = next(f for f in s["feed"] if f["type"] == "TaskAssigned")
    assert assigned["why"].startswith("best score")
    assert s["feed"][0]["task_id"] == "t2"  # newest first
    assert "SECRETACCOUNT" not in orjson.dumps(s).decode()  # the public feed carries no account
    assert s["devices"]["online"] == 2 and s["devices"]["capacity"] == 6 and s["devices"]["in_flight"] == 1
    regions = {x["region"]: x for x in s["regions"]}
    assert regions["eu-west"]["load"] == 0.5 and regions["us-east"]["lat"] == 40.0
    models = {m["model"]: m for m in s["models"]}
    assert models["m1"]["devices"] == 2 and models["m1"]["capacity"] == 6 and models["m2"]["devices"] == 1
    completed_series = sum(p["completed"] for p in s["throughput"]["series"])
    assert completed_series == 1


def test_redelivered_events_count_once(agg, live):
    records = [task_event("TaskSubmitted", "t1", NOW - 1, status="PENDING"),
               task_event("TaskCompleted", "t1", NOW - 0.5, status="COMPLETED")]
    assert apply(agg, records) == 2
    assert apply(agg, records) == 0  # SQS redelivery
    # A re-published event (new envelope id, same deterministic event_id) is the same transition.
    again = task_event("TaskCompleted", "t1", NOW - 0.5, status="COMPLETED")
    again_body = orjson.loads(again["body"])
    again_body["id"] = "another-envelope"
    assert apply(agg, [{"body": orjson.dumps(again_body).decode()}]) == 0
    assert summarize(agg, live, NOW)["tasks"]["completed"] == 1


def test_device_offline_then_back(agg, live):
    live.apply_heartbeats([beat("dev-a")], now=NOW)
    off = envelope("DeviceOffline", {"device_id": "dev-b", "event_id": "dev-b:offline", "ts": NOW - 3}, envelope_id="x1")
    assert apply(agg, [off]) == 1
    s = summarize(agg, live, NOW)
    assert [o["thing"] for o in s["offline"]] == ["dev-b"]
    # The same device going offline again later has the same event_id; its envelope id differs.
    on = envelope("DeviceOnline", {"device_id": "dev-b", "event_id": "dev-b:online:1", "ts": NOW - 2}, envelope_id="x2")
    off2 = envelope("DeviceOffline", {"device_id": "dev-b", "event_id": "dev-b:offline", "ts": NOW - 1}, envelope_id="x3")
    assert apply(agg, [on, off2]) == 2
    assert summarize(agg, live, NOW)["offline"][0]["since"] == NOW - 1
    # A device that is live again is not listed offline even before its DeviceOnline is applied.
    live.apply_heartbeats([beat("dev-b")], now=NOW)
    assert summarize(agg, live, NOW)["offline"] == []


def test_foreign_and_malformed_records_are_ignored(agg):
    bad = [{"body": "not json"}, {"body": "[]"}, envelope("UsageRecorded", {"request_id": "x", "ts": NOW}),
           envelope("TaskSubmitted", {"task_id": "t", "event_id": "t:s"}),  # no ts
           envelope("TaskSubmitted", {"task_id": 5, "ts": NOW})]
    assert apply(agg, bad) == 0


def test_publish_at_most_once_a_second_then_a_tick_publishes_the_rest(agg, live):
    sent: list[tuple[str, bytes]] = []
    ticks: list[int] = []
    feed = NetworkFeed(agg, live, lambda t, p: sent.append((t, p)), schedule_tick=ticks.append, clock=lambda: NOW)
    feed.handle_records([task_event("TaskSubmitted", "t1", NOW, status="PENDING")])
    assert len(sent) == 1 and sent[0][0] == NETWORK_SUMMARY_TOPIC and ticks == []
    # Two more batches within the period: no summary, and one tick (not one per batch) is scheduled.
    feed.handle_records([task_event("TaskSubmitted", "t2", NOW, status="PENDING")])
    feed.handle_records([task_event("TaskSubmitted", "t3", NOW, status="PENDING")])
    assert len(sent) == 1 and ticks == [1]
    # The tick arrives (SQS delay) once the period is over: the pending change goes out.
    r = agg.redis
    r.delete(agg.p + "pub-lock")  # the period ended (PX expiry, without waiting a real second)
    feed.handle_records([{"body": '{"ig3":"pubsub-tick"}'}])
    assert len(sent) == 2 and orjson.loads(sent[1][1])["tasks"]["submitted"] == 3
    # Nothing new: neither a batch of duplicates nor a stray tick publishes or schedules anything.
    r.delete(agg.p + "pub-lock")
    feed.handle_records([task_event("TaskSubmitted", "t3", NOW, status="PENDING"), {"body": '{"ig3":"pubsub-tick"}'}])
    assert len(sent) == 2 and ticks == [1]
    assert agg.claim_publish(1000)  # a period in progress (another instance just published) ...
    assert not feed.tick()  # ... the keep-alive defers to it ...
    r.delete(agg.p + "pub-lock")
    assert feed.tick() and len(sent) == 3  # ... and otherwise publishes even without changes


def test_summary_is_bounded_for_a_large_fleet():
    devices = [{"thing": f"d{i:04d}", "region": f"r{i % 7}", "lat": 10.0, "lon": 20.0, "capacity": 4,
                "in_flight": i % 5, "models": ["smollm2-135m-instruct", "tiny"]} for i in range(5000)]
    s = build_summary(now=NOW, devices=devices, buckets={}, totals={}, feed=[])
    assert s["devices"]["online"] == 5000 and s["devices"]["listed"] == MAX_DEVICE_ROWS and s["devices"]["truncated"]
    assert all(row["load"] == 1.0 for row in s["device_list"])  # the most loaded are the ones listed
    assert len(orjson.dumps(s)) < 128 * 1024  # IoT Core's message size limit


def test_latency_histogram_percentiles():
    assert latency_bucket(50) == 0 and latency_bucket(51) == 1 and latency_bucket(10**6) == 10
    hist = [0] * 11
    hist[latency_bucket(80)] = 9
    hist[latency_bucket(4000)] = 1
    assert percentile_from_histogram(hist, 0.5) == 100
    assert percentile_from_histogram(hist, 0.95) == 5000
    assert percentile_from_histogram([0] * 11, 0.5) is None


def test_a_thousand_devices_one_summary_a_second(agg, live):
    """1,000 devices heart-beating and a stream of event batches: the viewers get at most one summary a
    second (not one message per heartbeat or per batch), each listing the most loaded devices."""
    now = time.time()
    beats = [beat(f"m1-{i:04d}", ts=now, cap=4, in_flight=i % 5, region=f"r{i % 5}",
                  lat=-60 + (i % 120), lon=-170 + (i % 340)) for i in range(1000)]
    for i in range(0, 1000, 100):
        live.apply_heartbeats(beats[i : i + 100], now=now)
    sent: list[bytes] = []
    ticks: list[int] = []
    feed = NetworkFeed(agg, live, lambda t, p: sent.append(p), schedule_tick=ticks.append)
    start = time.monotonic()
    batches = 0
    while time.monotonic() - start < 2.5:
        t = time.time()
        feed.handle_records([task_event("TaskSubmitted", f"b{batches}-{k}", t, status="PENDING") for k in range(20)])
        batches += 1
    elapsed = time.monotonic() - start
    assert batches > len(sent) and 1 <= len(sent) <= int(elapsed) + 1
    assert len(ticks) <= len(sent) + 1  # at most one tick pending at a time
    s = orjson.loads(sent[-1])
    assert s["devices"]["online"] == 1000 and s["devices"]["listed"] == MAX_DEVICE_ROWS
    assert len(sent[-1]) < 128 * 1024


def test_dlq_depths_from_sqs(aws_env):
    """DLQ depths read from the queues the environment names (moto server), cached for a few seconds."""
    import os

    from ig3.aws import client
    from ig3.pubsub.feed import sqs_dlq_depths

    sqs = client("sqs")
    url = os.environ["IG3_QUEUE_NETWORK_DLQ_URL"]
    now = [0.0]
    read = sqs_dlq_depths(sqs, clock=lambda: now[0])
    before = read()
    assert set(before) >= {"tasks", "network", "results"} and all(isinstance(v, int) for v in before.values())
    sqs.send_message(QueueUrl=url, MessageBody="{}")
    assert read()["network"] == before["network"]  # cached
    now[0] += 6
    assert read()["network"] == before["network"] + 1
    broken = sqs_dlq_depths(sqs, env={"IG3_QUEUE_GONE_DLQ_URL": url + "-missing"})
    assert broken() == {"gone": None}
