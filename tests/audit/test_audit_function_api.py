"""The audit function on a real SQS queue (moto server) with the real SmolLM2 reference copy and
real Redis; then the API: reputation in ``GET /v1/devices/{id}`` and the operators' quarantine list."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from devices._events import LambdaContext, call
from ig3.audit.service import AuditJob
from ig3.audit.store import SqsAuditQueue
from ig3.wire import TaskInput, TaskLimits


@pytest.fixture
def audit_env(aws_env, moto_endpoint, redis_url, redis_prefix, tmp_path, monkeypatch):
    from ig3.audit import wiring
    from ig3.local.fleet import smollm2_path
    from ig3.tasks import wiring as task_wiring

    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")
    url = sqs.create_queue(QueueName=f"ig3-audit-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    models = tmp_path / "reference"
    models.mkdir()
    (models / smollm2_path().name).symlink_to(smollm2_path())
    monkeypatch.setenv("IG3_QUEUE_AUDIT_URL", url)
    monkeypatch.setenv("IG3_AUDIT_MODELS_DIR", str(models))
    monkeypatch.setenv("IG3_LIVE_PREFIX", redis_prefix)
    for f in (wiring.reputation_store, wiring.audit_service, task_wiring.live_state):
        f.cache_clear()
    yield {"sqs": sqs, "url": url}
    if wiring.audit_service.cache_info().currsize and wiring.audit_service().auditor is not None:
        wiring.audit_service().auditor.close()
    for f in (wiring.reputation_store, wiring.audit_service, task_wiring.live_state):
        f.cache_clear()


def _receive_as_lambda_event(sqs, url, want):
    records = []
    while len(records) < want:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        assert got, "audit messages did not arrive"
        for m in got:
            records.append(
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": {"ApproximateReceiveCount": "1"},
                    "messageAttributes": {},
                    "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:audit",
                    "awsRegion": "us-east-1",
                    "md5OfBody": "",
                }
            )
    return {"Records": records}


def test_audit_function_judges_jobs_from_sqs_and_the_api_shows_reputation_and_quarantine(audit_env, aws_env):
    from ig3.audit.wiring import audit_service
    from ig3_functions.api.handler import handler as api
    from ig3_functions.audit.handler import handler

    svc = audit_service()
    ref_hash = svc.auditor.hashes()[0]
    messages = [{"role": "user", "content": "Name a color."}]
    limits = TaskLimits(max_tokens=10)
    # An honest answer: the same file run through the agent's own generation loop.
    honest_text = svc.auditor.regenerate(
        AuditJob(
            audit_id="x",
            task_id="x",
            device="x",
            model="smollm2",
            model_hash=ref_hash,
            kind="chat",
            input=TaskInput(messages=messages),
            limits=limits,
            output="",
        )
    )

    def job(task_id, device, text, model_hash=ref_hash):
        return AuditJob(
            audit_id=f"aud_{task_id}",
            task_id=task_id,
            device=device,
            model="smollm2",
            model_hash=model_hash,
            kind="chat",
            input=TaskInput(messages=messages),
            limits=limits,
            output=text,
            finish_reason="length",
            prompt_tokens=20,
            completion_tokens=10,
        )

    queue = SqsAuditQueue(audit_env["url"])
    queue.send_audit(job("t1", "honest-dev", honest_text))
    queue.send_audit(job("t2", "liar-dev", "seven paper river the quickly of blue and"))
    queue.send_audit(job("t3", "someone", honest_text, model_hash="ab" * 32))  # no auditor holds it
    audit_env["sqs"].send_message(QueueUrl=audit_env["url"], MessageBody='{"not": "a job"}')
    event = _receive_as_lambda_event(audit_env["sqs"], audit_env["url"], 4)
    out = handler(event, LambdaContext())
    by_id = {r["messageId"]: json.loads(r["body"]).get("task_id") for r in event["Records"]}
    assert [by_id[f["itemIdentifier"]] for f in out["batchItemFailures"]] == ["t3"]  # retried, not lost
    # Redelivery of the same jobs changes nothing (one verdict per job).
    handler(
        {"Records": [r for r in event["Records"] if by_id[r["messageId"]] in ("t1", "t2")]}, LambdaContext()
    )

    store = svc.store
    assert store.get("honest-dev").clean_audits == 1 and store.get("honest-dev").standing.value == "good"
    assert store.get("liar-dev").failed_audits == 1 and store.get("liar-dev").standing.value == "quarantined"

    from ig3 import config
    from ig3.aws import client

    for dev in ("honest-dev", "liar-dev"):  # registry records (registration itself is tested elsewhere)
        client("dynamodb").put_item(
            TableName=config.table_name("devices"),
            Item={"device_id": {"S": dev}, "doc": {"S": json.dumps({"device_id": dev})}},
        )
    user = {"principal": "0xabc", "principal_type": "wallet", "scopes": "tasks"}
    status, body = call(
        api,
        "GET",
        "/v1/devices/liar-dev",
        resource="/v1/devices/{id}",
        path_params={"id": "liar-dev"},
        principal=user,
    )
    assert status == 200, body
    rep = body["reputation"]
    assert rep["standing"] == "quarantined" and rep["failed_audits"] == 1 and rep["score"] < 0.5
    assert rep["audits"][0]["verdict"] == "fail" and rep["audits"][0]["task_id"] == "t2"
    status, body = call(
        api,
        "GET",
        "/v1/devices/honest-dev",
        resource="/v1/devices/{id}",
        path_params={"id": "honest-dev"},
        principal=user,
    )
    assert body["reputation"]["standing"] == "good" and body["reputation"]["audits"][0]["verdict"] == "pass"

    status, body = call(api, "GET", "/v1/audit/quarantine", principal=user)
    assert status == 403 and body["error"]["code"] == "insufficient_scope"
    operator = {**user, "scopes": "operator"}
    status, body = call(api, "GET", "/v1/audit/quarantine", principal=operator)
    assert status == 200
    assert [d["device"] for d in body["devices"]] == ["liar-dev"]
    evidence = body["devices"][0]["evidence"][0]
    assert (
        evidence["signal"] == "audit_fail"
        and evidence["task_id"] == "t2"
        and "top choice" in evidence["reason"]
    )


def test_without_any_reference_copy_jobs_are_skipped_not_sent_to_the_dlq(aws_env, redis_prefix, monkeypatch):
    """A deployment with neither a models bucket nor a models directory: a retry could reach no auditor,
    and every DLQ message is an alarm. Jobs are acknowledged unjudged; the device's reputation is untouched."""
    from ig3.audit import wiring
    from ig3.tasks import wiring as task_wiring
    from ig3_functions.audit.handler import handler

    monkeypatch.delenv("IG3_AUDIT_MODELS_DIR", raising=False)
    monkeypatch.delenv("IG3_AUDIT_MODELS_BUCKET", raising=False)  # the local cloud's models bucket
    monkeypatch.setenv("IG3_LIVE_PREFIX", redis_prefix)
    for f in (wiring.reputation_store, wiring.audit_service, task_wiring.live_state):
        f.cache_clear()
    try:
        job = AuditJob(audit_id="aud_s1", task_id="s1", device="dev-s", model="smollm2", model_hash="ab" * 32,
                       kind="chat", input=TaskInput(prompt="hi"), limits=TaskLimits(max_tokens=4), output="x")
        record = {"messageId": "m1", "receiptHandle": "r", "body": job.model_dump_json(),
                  "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
                  "eventSource": "aws:sqs",
                  "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:audit", "awsRegion": "us-east-1",
                  "md5OfBody": ""}
        assert handler({"Records": [record]}, LambdaContext()) == {"batchItemFailures": []}
        assert wiring.audit_service().auditor is None
        assert wiring.audit_service().store.history("dev-s") == []
    finally:
        for f in (wiring.reputation_store, wiring.audit_service, task_wiring.live_state):
            f.cache_clear()
