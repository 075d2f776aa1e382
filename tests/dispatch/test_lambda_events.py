"""``ig3.lambda_events``: how an event-fed image function (the cloud worker) receives its events
from Lambda Web Adapter — ``POST /events`` with the raw event, the runtime's context as a header,
the handler's answer as the invocation's result."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from ig3.lambda_events import EventHandlerApp

SEEN: list[tuple[dict, object]] = []


def recording_handler(event, context):
    SEEN.append((event, context))
    return {"batchItemFailures": []}


def failing_handler(event, context):
    raise ConnectionError("DynamoDB unreachable")


def sqs_event(*ids: str) -> dict:
    return {"Records": [{"messageId": i, "body": "{}", "eventSource": "aws:sqs"} for i in ids]}


def call(app, method, path, body=None, headers=None):
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lwa") as client:
            return await client.request(method, path, content=body, headers=headers or {})

    return asyncio.run(go())


def test_events_reach_the_handler_with_the_lambda_context():
    SEEN.clear()
    app = EventHandlerApp(f"{__name__}:recording_handler")
    assert call(app, "GET", "/").status_code == 200  # the adapter's readiness check
    ctx = {"request_id": "req-1", "deadline": 4102444800000, "invoked_function_arn": "arn:aws:lambda:x",
           "env_config": {"function_name": "ig3-prod-cloud", "memory": 1024, "version": "$LATEST"}}
    resp = call(app, "POST", "/events", json.dumps(sqs_event("m1")).encode(),
                {"x-amzn-lambda-context": json.dumps(ctx)})
    assert resp.status_code == 200 and resp.json() == {"batchItemFailures": []}
    (event, context), = SEEN
    assert event == sqs_event("m1")
    assert context.function_name == "ig3-prod-cloud" and context.aws_request_id == "req-1"
    assert context.memory_limit_in_mb == 1024 and context.get_remaining_time_in_millis() > 0


def test_a_handler_that_raises_fails_every_record_of_the_batch_explicitly():
    app = EventHandlerApp(f"{__name__}:failing_handler")
    resp = call(app, "POST", "/events", json.dumps(sqs_event("m1", "m2")).encode())
    assert resp.status_code == 200
    assert resp.json() == {"batchItemFailures": [{"itemIdentifier": "m1"}, {"itemIdentifier": "m2"}]}


@pytest.mark.parametrize("method,path,body,status,code", [
    ("POST", "/events", b"not json", 400, "invalid_event"),
    ("GET", "/v1/anything", None, 404, "not_found"),
])
def test_bad_requests_get_the_one_error_shape(method, path, body, status, code):
    resp = call(EventHandlerApp(f"{__name__}:recording_handler"), method, path, body)
    assert resp.status_code == status and resp.json()["error"]["code"] == code


@pytest.mark.integration
def test_the_cloud_worker_answers_through_the_adapter_path(harness):
    """The real cloud handler behind the app: a hand-off for a task that does not exist is
    acknowledged (nothing to run, nothing to retry)."""
    from ig3.topology import TOPOLOGY

    app = EventHandlerApp(TOPOLOGY.function("cloud").handler)
    event = sqs_event("m1")
    event["Records"][0]["body"] = json.dumps({"task_id": "tsk_doesnotexist000000000000", "attempt": 1})
    resp = call(app, "POST", "/events", json.dumps(event).encode())
    assert resp.status_code == 200 and resp.json() == {"batchItemFailures": []}
