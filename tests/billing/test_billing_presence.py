"""Uptime from DeviceOnline/DeviceOffline transitions, and the weekly rewards job wired to it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from ig3.billing.presence import MemoryPresenceStore, PresenceUptime, parse_presence_message
from ig3.events import DomainEvent
from ig3.local.lambda_runtime import LambdaContext

T0 = datetime(2030, 1, 3, 2, 0, tzinfo=UTC)  # a Thursday 02:00
S = 1000  # ms per second


def ms(seconds: float) -> int:
    return int((T0.timestamp() + seconds) * 1000)


def test_uptime_sums_online_intervals_in_any_arrival_order():
    store = MemoryPresenceStore()
    events = [
        (ms(-50), "online"),
        (ms(100), "offline"),
        (ms(300), "online"),
        (ms(300), "online"),
        (ms(350), "online"),
        (ms(400), "offline"),
        (ms(900), "online"),
    ]
    for ts, kind in reversed(events):  # out of order, with a duplicate and a repeated "online"
        store.record("d1", ts, kind)
    store.record("d2", ms(-10), "offline")
    end = datetime.fromtimestamp(T0.timestamp() + 1000, UTC)
    up = PresenceUptime(store, clock=lambda: T0.timestamp() + 950)
    got = up.online_seconds(["d1", "d2", "d3"], T0, end)
    # online at start (since -50) -> 100: 100 s; 300 -> 400: 100 s; 900 -> now (950): 50 s
    assert got == {"d1": 250.0, "d2": 0.0, "d3": 0.0}
    later = PresenceUptime(store, clock=lambda: T0.timestamp() + 5000)
    assert later.online_seconds(["d1"], T0, end) == {"d1": 300.0}  # capped at the window's end


def test_parse_presence_message():
    import orjson

    body = orjson.dumps(
        {
            "detail-type": "DeviceOffline",
            "time": "2030-01-03T02:00:07Z",
            "detail": {"device_id": "m1-a", "event_id": "m1-a:offline"},
        }
    )
    assert parse_presence_message(body) == ("m1-a", ms(7), "offline")
    body = orjson.dumps(
        {"detail-type": "DeviceOnline", "detail": {"device_id": "m1-a", "ts": T0.timestamp() + 1.5}}
    )
    assert parse_presence_message(body) == ("m1-a", ms(1.5), "online")
    with pytest.raises(ValueError):
        parse_presence_message(orjson.dumps({"detail-type": "TaskAssigned", "detail": {"device_id": "x"}}))


@pytest.mark.integration
def test_transitions_via_bus_queue_and_function_feed_the_rewards_job(aws_env):
    import boto3
    from ig3.billing.dynamo import DynamoBillingStore
    from ig3.billing.presence import DynamoPresenceStore
    from ig3.billing.pricing import price_book
    from ig3.billing.rewards import DeviceInfo, RewardsConfig
    from ig3.billing.rewards_store import DynamoRewardsStore, run_epoch
    from ig3.billing.service import BillingService
    from ig3.events import EventBridgePublisher
    from ig3.local.pollers import sqs_event
    from ig3_functions.billing.presence import handler

    config = RewardsConfig.from_env()
    epoch = config.epoch_of(T0.timestamp())
    start, end = config.epoch_bounds(epoch)
    device = "m1-" + uuid.uuid4().hex[:8]
    week = (end - start).total_seconds()
    # The publisher stamps detail.ts with the event's time, as the telemetry function's events carry it.
    t = start.timestamp()
    events = [
        DomainEvent("DeviceOnline", {"device_id": device}, f"{device}:on:1", time=t - 60),
        DomainEvent("DeviceOffline", {"device_id": device}, f"{device}:off", time=t + week / 2),
        DomainEvent("DeviceOnline", {"device_id": device}, f"{device}:on:2", time=t + week * 0.75),
    ]
    EventBridgePublisher(aws_env["IG3_EVENT_BUS"], client=boto3.client("events")).publish(events)
    sqs = boto3.client("sqs")
    url = aws_env["IG3_QUEUE_PRESENCE_URL"]
    messages = []
    # The session's presence queue is shared: other tests' devices come and go on it too.
    for _ in range(20):
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        messages += [m for m in got if device in m["Body"]]
        if len(messages) >= 3:
            break
    assert len(messages) == 3
    ctx = LambdaContext(function_name="presence", aws_request_id=uuid.uuid4().hex)
    assert handler(
        sqs_event(messages + messages[:1], "arn:aws:sqs:us-east-1:1:presence", "us-east-1"), ctx
    ) == {"batchItemFailures": []}
    uptime = PresenceUptime(DynamoPresenceStore.from_env(), clock=lambda: end.timestamp() + 3600)
    assert uptime.online_seconds([device], start, end) == {device: week * 0.75}

    svc = BillingService(DynamoBillingStore.from_env(), price_book(), clock=lambda: start.timestamp() + 10)
    svc.credit("0xpayer" + device, 10**9, f"dep-{device}")
    for i in range(3):
        svc.settle(
            f"{device}-t{i}",
            500,
            account="0xpayer" + device,
            details={"device": device, "usage_kind": "chat", "prompt_tokens": 1, "completion_tokens": 1},
        )
    rewards = DynamoRewardsStore.from_env()
    summary = run_epoch(
        epoch,
        config=config,
        roster=[DeviceInfo(device, tier="m1e", stake=Decimal(100_000))],
        uptime=uptime,
        ledger=svc.store,
        rewards=rewards,
        now=end.timestamp() + 3600,
    )
    assert summary["written"] == 1
    r = rewards.get(device, epoch)
    assert r.factors["uptime_ratio"] == "0.75" and r.factors["ai_task_score"] == "1.3"
    assert r.base_units == int(Decimal(2333) * Decimal("0.75") * 8 * 10**6)


@pytest.mark.integration
def test_rewards_handler_publishes_the_last_ended_epoch(aws_env):
    from ig3_functions.billing.rewards import handler

    out = handler(
        {"source": "aws.events"}, LambdaContext(function_name="rewards", aws_request_id=uuid.uuid4().hex)
    )
    from ig3.billing.rewards import RewardsConfig

    config = RewardsConfig.from_env()
    assert out["epoch"] == config.epoch_of(datetime.now(UTC).timestamp() - 900) - 1
    again = handler({}, LambdaContext(function_name="rewards", aws_request_id=uuid.uuid4().hex))
    assert again["written"] == 0 and again["devices"] == out["devices"]
