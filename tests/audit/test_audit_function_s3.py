"""The audit function as deployed: no local model directory, the reference models in the models bucket
(moto in server mode), fetched into a cache directory on first use, the real SmolLM2 re-scoring, verdicts
folded into reputations in real Redis; a job pinning an unpublished or a corrupted model is retried."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from devices._events import LambdaContext
from ig3.audit.service import AuditJob
from ig3.wire import TaskInput, TaskLimits


@pytest.fixture
def s3_audit_env(aws_env, moto_endpoint, redis_url, redis_prefix, tmp_path, monkeypatch):
    from ig3.audit import wiring
    from ig3.audit.s3models import publish
    from ig3.local.fleet import smollm2_path
    from ig3.tasks import wiring as task_wiring

    bucket = aws_env["IG3_AUDIT_MODELS_BUCKET"]  # the topology's models bucket, provisioned in moto
    prefix = f"t{uuid.uuid4().hex[:8]}/models/"  # this test's own keys
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    published = publish(smollm2_path(), bucket=bucket, prefix=prefix, client=s3)  # what `ig3 models publish` does
    monkeypatch.delenv("IG3_AUDIT_MODELS_DIR", raising=False)
    monkeypatch.setenv("IG3_AUDIT_MODELS_BUCKET", bucket)
    monkeypatch.setenv("IG3_AUDIT_MODELS_PREFIX", prefix)
    monkeypatch.setenv("IG3_AUDIT_MODELS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("IG3_AUDIT_MODELS_CACHE_MB", "512")
    monkeypatch.setenv("IG3_LIVE_PREFIX", redis_prefix)
    for f in (wiring.reputation_store, wiring.audit_service, task_wiring.live_state):
        f.cache_clear()
    yield {"s3": s3, "bucket": bucket, "prefix": prefix, "sha256": published.meta.sha256,
           "cache": tmp_path / "cache"}
    if wiring.audit_service.cache_info().currsize and wiring.audit_service().auditor is not None:
        wiring.audit_service().auditor.close()
    for f in (wiring.reputation_store, wiring.audit_service, task_wiring.live_state):
        f.cache_clear()


def _record(job: AuditJob, i: int) -> dict:
    return {"messageId": f"m{i}", "receiptHandle": f"r{i}", "body": job.model_dump_json(),
            "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {}, "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:audit", "awsRegion": "us-east-1",
            "md5OfBody": ""}


def test_audit_function_rescores_with_the_model_from_the_bucket(s3_audit_env, tmp_path):
    from ig3.audit.models import CachedModelStore
    from ig3.audit.s3models import S3ModelSource
    from ig3.audit.wiring import audit_service
    from ig3_edge.tinymodel import write_tiny_gguf
    from ig3_functions.audit.handler import handler

    env = s3_audit_env
    svc = audit_service()
    store = svc.auditor.store
    assert isinstance(store, CachedModelStore) and isinstance(store.source, S3ModelSource)
    assert store.source.prefix == env["prefix"] and store.max_bytes == 512 * 2**20
    assert svc.auditor.loaded() == [] and store.hashes() == []  # nothing fetched before the first job
    ref = env["sha256"]
    messages = [{"role": "user", "content": "Name a color."}]
    limits = TaskLimits(max_tokens=10)

    def job(task_id, device, text, model_hash=ref):
        return AuditJob(audit_id=f"aud_{task_id}", task_id=task_id, device=device, model="smollm2",
                        model_hash=model_hash, kind="chat", input=TaskInput(messages=messages), limits=limits,
                        output=text, finish_reason="length", prompt_tokens=20, completion_tokens=10)

    honest_text = svc.auditor.regenerate(job("x", "x", ""))  # the first use: fetched from S3, loaded
    assert store.stats.downloads == 1 and (env["cache"] / f"{ref}.gguf").is_file()
    assert svc.auditor.loaded() == [ref]

    # A model whose object in the bucket is not the file its key names (bytes of another file).
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", seed=5)
    from ig3.audit.models import file_sha256

    tiny_sha = file_sha256(tiny)
    env["s3"].put_object(Bucket=env["bucket"], Key=f"{env['prefix']}{tiny_sha}.gguf",
                         Body=tiny.read_bytes()[:-1] + b"\x00", Metadata={"sha256": tiny_sha})
    jobs = [job("t1", "honest-s3", honest_text),
            job("t2", "liar-s3", "seven paper river the quickly of blue and"),
            job("t3", "someone-s3", honest_text, model_hash="cd" * 32),  # never published
            job("t4", "other-s3", honest_text, model_hash=tiny_sha)]  # corrupted object
    event = {"Records": [_record(j, i) for i, j in enumerate(jobs)]}
    out = handler(event, LambdaContext())
    by_id = {r["messageId"]: json.loads(r["body"])["task_id"] for r in event["Records"]}
    assert sorted(by_id[f["itemIdentifier"]] for f in out["batchItemFailures"]) == ["t3", "t4"]  # retried -> DLQ

    rep = svc.store
    assert rep.get("honest-s3").clean_audits == 1 and rep.get("honest-s3").standing.value == "good"
    assert rep.get("liar-s3").failed_audits == 1 and rep.get("liar-s3").standing.value == "quarantined"
    assert rep.history("other-s3") == [] and rep.history("someone-s3") == []  # no verdict on what was not judged
    evidence = rep.history("liar-s3")[0]
    assert evidence["auditor"] == "cloud-reference" and evidence["model_hash"] == ref
    # The loaded model served both jobs (not even a cache lookup); the corrupted file was neither kept nor
    # loaded, and did not unload the warm model.
    assert store.stats.downloads == 1 and store.stats.hits == 0 and store.stats.rejected == 1
    assert store.hashes() == [ref] and svc.auditor.loaded() == [ref]
    assert not list(env["cache"].glob("*.part"))
    # Redelivery changes nothing (one verdict per job), with the model still loaded.
    handler({"Records": event["Records"][:2]}, LambdaContext())
    assert rep.get("honest-s3").clean_audits == 1 and rep.get("liar-s3").failed_audits == 1
    assert store.stats.downloads == 1
