"""The billing function end to end: UsageRecorded on the bus -> EventBridge rule -> billing queue
(moto server) -> the handler with a real Lambda SQS batch event -> one ledger entry per request.
"""

from __future__ import annotations

import uuid

import orjson
import pytest
from ig3.billing.dynamo import DynamoBillingStore
from ig3.billing.models import usage_entry_id
from ig3.billing.pricing import price_book
from ig3.billing.service import BillingService
from ig3.events import DomainEvent, EventBridgePublisher
from ig3.local.lambda_runtime import LambdaContext
from ig3.local.pollers import sqs_event

pytestmark = pytest.mark.integration


def usage(request_id, account, status="completed", **kw):
    detail = {
        "request_id": request_id,
        "account": account,
        "model": "smollm2-135m-instruct",
        "route": "edge",
        "kind": "chat",
        "device": "m1-test-1",
        "prompt_tokens": 1200,
        "completion_tokens": 800,
        "duration_ms": 900,
        "status": status,
    }
    detail.update(kw)
    return DomainEvent("UsageRecorded", detail, event_id=f"{request_id}:{status}:{uuid.uuid4().hex[:6]}")


def drain(sqs, url):
    out = []
    while True:
        msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        )
        if not msgs:
            return out
        out += msgs
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)],
        )


def invoke(messages):
    from ig3_functions.billing.handler import handler

    ctx = LambdaContext(function_name="billing", aws_request_id=uuid.uuid4().hex)
    return handler(sqs_event(messages, "arn:aws:sqs:us-east-1:123456789012:billing", "us-east-1"), ctx)


def test_usage_events_via_bus_and_queue_bill_exactly_once(aws_env):
    import boto3
    from ig3.billing.wiring import billing_service

    billing_service.cache_clear()
    svc = BillingService(DynamoBillingStore.from_env(), price_book())
    a = "0x" + uuid.uuid4().hex
    svc.credit(a, 1_000_000, f"dep-{a}")
    for r in ("r1", "r2"):
        svc.hold(a, f"{a}-{r}", svc.estimate("smollm2-135m-instruct", "edge", "chat", 1200, 1000), 300)
    events = [
        usage(f"{a}-r1", a),
        usage(f"{a}-r2", a, status="failed", completion_tokens=0),
        usage(f"{a}-r1", a),  # duplicate publish (a retried PutEvents)
        usage(f"{a}-r3", a.upper().replace("0X", "0x"), completion_tokens=10),  # no hold; checksum-cased
        usage(f"{a}-r4", a, route="cloud", sagemaker_ms=2500, device=None),
    ]
    EventBridgePublisher(aws_env["IG3_EVENT_BUS"], client=boto3.client("events")).publish(events)
    sqs = boto3.client("sqs")
    messages = drain(sqs, aws_env["IG3_QUEUE_BILLING_URL"])
    assert len(messages) == 5  # the rule routed every UsageRecorded event to the billing queue
    bad = {
        "MessageId": "poison-1",
        "ReceiptHandle": "rh",
        "Body": orjson.dumps(
            {"detail-type": "UsageRecorded", "detail": {"request_id": "x y", "status": "completed"}}
        ).decode(),
    }
    result = invoke(messages + [bad])
    assert result == {"batchItemFailures": [{"itemIdentifier": "poison-1"}]}
    # Redelivery of the whole batch, out of order: nothing changes.
    assert invoke(list(reversed(messages))) == {"batchItemFailures": []}

    book = price_book()
    expect = {
        "r1": book.cost("smollm2-135m-instruct", "edge", "chat", prompt_tokens=1200, completion_tokens=800),
        "r3": book.cost("smollm2-135m-instruct", "edge", "chat", prompt_tokens=1200, completion_tokens=10),
        "r4": book.cost(
            "smollm2-135m-instruct",
            "cloud",
            "chat",
            prompt_tokens=1200,
            completion_tokens=800,
            sagemaker_ms=2500,
        ),
    }
    page, _ = svc.usage(a, limit=50)
    usage_entries = {e.reference.rsplit("-", 1)[1]: e for e in page if e.kind == "usage"}
    assert {k: -e.amount for k, e in usage_entries.items()} == expect  # r2 failed: never billed
    assert svc.store.get_entry(usage_entry_id(f"{a}-r2")) is None
    assert svc.store.get_hold(f"{a}-r2").state == "released"
    assert svc.store.get_hold(f"{a}-r1").state == "settled"
    assert (
        usage_entries["r1"].details["device"] == "m1-test-1"
        and usage_entries["r4"].details["sagemaker_ms"] == 2500
    )
    b = svc.balance(a)
    assert b.held == 0 and b.total == 1_000_000 - sum(expect.values()) == b.available
