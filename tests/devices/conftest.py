"""Registration against moto server (IoT, DynamoDB, EventBridge->SQS) and real Redis live state."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest


@pytest.fixture(scope="module")
def reg_env(aws_env, moto_endpoint):
    """Per-module IoT names and the settings the registration service reads; events land in a queue."""
    import os

    suffix = uuid.uuid4().hex[:8]
    settings = {
        "IG3_DID_RESOLVER": "local",
        "IG3_PUBLIC_HOST": "gw.test",
        "IG3_PEAQ_CHAIN_ID": "3338",
        "IG3_IOT_THING_GROUP": f"ig3-test-{suffix}",
        "IG3_IOT_POLICY_PREFIX": f"ig3-t{suffix}-",
    }
    old = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    kw = dict(endpoint_url=moto_endpoint, region_name="us-east-1")
    sqs, events = boto3.client("sqs", **kw), boto3.client("events", **kw)
    queue = sqs.create_queue(QueueName=f"device-events-{suffix}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    bus = aws_env["IG3_EVENT_BUS"]
    events.put_rule(
        Name=f"devices-{suffix}",
        EventBusName=bus,
        State="ENABLED",
        EventPattern=json.dumps(
            {"source": ["ig3"], "detail-type": ["DeviceRegistered", "DeviceDeregistered"]}
        ),
    )
    events.put_targets(Rule=f"devices-{suffix}", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    from ig3.devices import wiring

    wiring.reset()
    yield {**aws_env, **settings, "events_queue": queue}
    wiring.reset()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def iot(moto_endpoint):
    return boto3.client("iot", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def ddb(moto_endpoint):
    return boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def live(redis_url, redis_prefix):
    from ig3.redis_client import get_redis
    from ig3.scheduler import LiveState

    return LiveState(get_redis(redis_url), prefix=redis_prefix)


@pytest.fixture
def service(reg_env, live):
    """The service the api function uses, its live-state hook pointed at this test's Redis prefix."""
    from ig3.devices.wiring import registration_service

    svc = registration_service()
    svc.remove_live_state = live.remove
    return svc
