"""Large uploads as ingestion jobs: 202 + job, the upload in the topology's S3 bucket, the job on the
``rag_ingest`` SQS queue (moto server), the ``rag_ingest`` handler fed the real SQS message as a
Lambda event; REAL embeddings (all-MiniLM-L6-v2) on both stores.

At-least-once without duplicates: a batch that fails (embedding outage) or crashes after writing
its vectors but before its checkpoint is redone on redelivery, and the collection ends with
exactly the chunks of its documents, counted once. Also: job ownership, the default store, and
the 413 ceiling."""

from __future__ import annotations

import uuid

import boto3
import orjson
import pytest

from ig3.errors import Unavailable
from ig3.events import MemoryEventPublisher
from ig3.local.lambda_runtime import LambdaContext
from ig3.local.pollers import sqs_event
from ig3.rag import jobs as jobmod
from ig3.topology import TOPOLOGY, bucket_env, queue_env, table_env

from .conftest import make_store
from .test_collections_api import CORPUS, QUESTIONS, call, wallet

pytestmark = pytest.mark.integration

BATCH = 3  # chunks per checkpoint in these tests (the default is 256)


class FlakyEmbedder:
    """The real model, with an outage switch (the network's embedding path can fail)."""

    def __init__(self, real):
        self.real = real
        self.fail_on_call: int | None = None
        self.calls = 0

    def embed(self, *args, **kwargs):
        self.calls += 1
        if self.fail_on_call == self.calls:
            raise Unavailable("the embedding task did not finish in time", code="embedding_timeout")
        return self.real.embed(*args, **kwargs)


class CrashAfterUpsert:
    """The real store; ``crash_on`` makes that upsert call write its points and then die (a
    function timing out after the write, before its checkpoint)."""

    def __init__(self, real):
        self.real = real
        self.crash_on: int | None = None
        self.upserts = 0

    def upsert(self, space, points):
        self.real.upsert(space, points)
        self.upserts += 1
        if self.crash_on == self.upserts:
            raise RuntimeError("function timed out")

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.fixture
def jobs_service(aws_env, minilm, qdrant_path, rag_bucket, monkeypatch):
    import ig3.rag.wiring as wiring
    from ig3.rag.jobs import DynamoJobStore, S3UploadStore, SqsJobQueue
    from ig3.rag.registry import DynamoRegistry
    from ig3.rag.service import CollectionsService

    monkeypatch.setattr(jobmod, "BATCH_CHUNKS", BATCH)
    events = MemoryEventPublisher()
    embedder = FlakyEmbedder(minilm)
    stores = {k: CrashAfterUpsert(make_store(k, qdrant_path, rag_bucket)) for k in ("qdrant", "faiss")}
    svc = CollectionsService(
        DynamoRegistry(aws_env[table_env("rag_collections")]),
        stores,
        embedder,
        events,
        jobs=DynamoJobStore(aws_env[table_env("rag_jobs")]),
        uploads=S3UploadStore(aws_env[bucket_env("rag")]),
        job_queue=SqsJobQueue(aws_env[queue_env("rag_ingest")]),
        max_sync_chunks=4,
    )
    monkeypatch.setattr(wiring, "collections_service", lambda: svc)
    return svc, embedder, stores


def receive_job_messages(aws_env, *, expect: int = 1) -> list[dict]:
    sqs = boto3.client("sqs")
    url = aws_env[queue_env("rag_ingest")]
    got: list[dict] = []
    for _ in range(20):
        got += sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                   AttributeNames=["All"]).get("Messages", [])
        if len(got) >= expect:
            break
    for m in got:  # the test now owns them, as Lambda's mapping would while the function runs
        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return got


def run_worker(messages: list[dict], *, receive_count: int = 1) -> dict:
    """The rag_ingest function as Lambda's SQS mapping would call it."""
    from ig3_functions.rag.ingest import handler

    for m in messages:
        m.setdefault("Attributes", {})["ApproximateReceiveCount"] = str(receive_count)
    fn = TOPOLOGY.function("rag_ingest")
    event = sqs_event(messages, f"arn:aws:sqs:us-east-1:123456789012:{fn.name}", "us-east-1")
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    try:
        return handler(event, LambdaContext(function_name=fn.name, aws_request_id=uuid.uuid4().hex))
    except BatchProcessingError:
        # Powertools fails the invocation when every record failed: Lambda then returns them all.
        return {"batchItemFailures": [{"itemIdentifier": m["MessageId"]} for m in messages]}


def spec(name: str, store: str | None = None) -> dict:
    body = {"name": name, "embedding_model": "all-MiniLM-L6-v2", "dimension": 384}
    return {**body, "store": store} if store else body


def corpus_docs():
    return [{"id": k, "text": v, "metadata": {"topic": k}} for k, v in CORPUS.items()]


@pytest.mark.parametrize("store", ["qdrant", "faiss"])
def test_large_upload_becomes_a_job_that_survives_failures_and_redelivery(jobs_service, aws_env, store):
    svc, embedder, stores = jobs_service
    me = wallet()
    st, body = call("POST", "/v1/collections", principal=me,
                    body=spec("big", store))
    assert st == 201, body
    # One chunk per document (chunk_size 40 words > every document): 10 chunks > the sync limit of 4.
    st, job = call("POST", "/v1/collections/big/documents", principal=me,
                   body={"documents": corpus_docs(), "chunk_size": 40, "chunk_overlap": 0})
    assert st == 202, job
    assert job["object"] == "collection.ingestion_job" and job["status"] == "queued"
    assert job["chunks_total"] == len(CORPUS) and job["chunks_done"] == 0
    assert job["ids"] == list(CORPUS)
    # the upload is in the topology's bucket, under the prefix its lifecycle rule expires
    upload_key = f"{jobmod.UPLOAD_PREFIX}{job['id']}.json"
    s3 = boto3.client("s3")
    assert orjson.loads(s3.get_object(Bucket=aws_env[bucket_env("rag")], Key=upload_key)["Body"].read())[
        "documents"][0]["id"] == "volcano"
    st, seen = call("GET", f"/v1/collections/big/jobs/{job['id']}", principal=me)
    assert st == 200 and seen["status"] == "queued"

    (msg,) = receive_job_messages(aws_env)
    assert orjson.loads(msg["Body"]) == {"job_id": job["id"]}

    # 1st delivery: the 2nd batch's embedding times out -> a batch item failure, batch 1 checkpointed.
    embedder.calls, embedder.fail_on_call = 0, 2
    assert run_worker([msg]) == {"batchItemFailures": [{"itemIdentifier": msg["MessageId"]}]}
    st, seen = call("GET", f"/v1/collections/big/jobs/{job['id']}", principal=me)
    assert seen["status"] == "running" and seen["chunks_done"] == BATCH
    assert svc.get(me.subject, "big").chunks == BATCH

    # 2nd delivery: the 3rd batch's vectors are written, then the function dies before its checkpoint.
    embedder.fail_on_call = None
    stores[store].upserts, stores[store].crash_on = 0, 2
    assert run_worker([msg], receive_count=2)["batchItemFailures"]
    st, seen = call("GET", f"/v1/collections/big/jobs/{job['id']}", principal=me)
    assert seen["status"] == "running" and seen["chunks_done"] == 2 * BATCH

    # 3rd delivery: redoes that batch (replacing its own points) and finishes.
    stores[store].crash_on = None
    assert run_worker([msg], receive_count=3) == {"batchItemFailures": []}
    st, seen = call("GET", f"/v1/collections/big/jobs/{job['id']}", principal=me)
    assert seen["status"] == "succeeded" and seen["chunks_done"] == len(CORPUS) and seen["progress"] == 1.0
    assert seen["replaced_chunks"] == 0 and seen["embedding_tokens"] > 100
    # A late duplicate of the message changes nothing.
    assert run_worker([msg], receive_count=1) == {"batchItemFailures": []}

    rec = svc.get(me.subject, "big")
    space = svc._space(rec)
    assert rec.chunks == len(CORPUS) == stores[store].count(space)  # no duplicates, counted once
    with pytest.raises(Exception) as gone:  # the upload is removed once the job is done
        s3.get_object(Bucket=aws_env[bucket_env("rag")], Key=upload_key)
    assert "NoSuchKey" in str(gone.value)
    hits = 0
    for question, answer in QUESTIONS:
        st, body = call("POST", "/v1/collections/big/query", principal=me,
                        body={"query": question, "top_k": 3})
        assert st == 200, body
        hits += answer in [d["document"] for d in body["data"]]
    assert hits == len(QUESTIONS)

    # Re-uploading the same documents as a job replaces them: still 10 chunks, 10 replaced.
    st, job2 = call("POST", "/v1/collections/big/documents", principal=me,
                    body={"documents": corpus_docs(), "chunk_size": 40, "chunk_overlap": 0})
    assert st == 202
    assert run_worker(receive_job_messages(aws_env)) == {"batchItemFailures": []}
    st, seen = call("GET", f"/v1/collections/big/jobs/{job2['id']}", principal=me)
    assert seen["status"] == "succeeded" and seen["replaced_chunks"] == len(CORPUS)
    assert svc.get(me.subject, "big").chunks == len(CORPUS) == stores[store].count(space)


def test_job_ownership_and_permanent_failure(jobs_service, aws_env):
    svc, _, _ = jobs_service
    me, other = wallet(), wallet()
    for who in (me, other):
        st, _ = call("POST", "/v1/collections", principal=who,
                     body=spec("kb", "faiss"))
        assert st == 201
    st, job = call("POST", "/v1/collections/kb/documents", principal=me,
                   body={"documents": corpus_docs(), "chunk_size": 40, "chunk_overlap": 0})
    assert st == 202
    # another wallet, even with a collection of the same name, cannot see it; nor can a wrong path
    st, err = call("GET", f"/v1/collections/kb/jobs/{job['id']}", principal=other)
    assert st == 404 and err["error"]["code"] == "job_not_found"
    st, err = call("GET", f"/v1/collections/other/jobs/{job['id']}", principal=me)
    assert st == 404
    st, err = call("GET", "/v1/collections/kb/jobs/nonsense", principal=me)
    assert st == 404 and err["error"]["code"] == "job_not_found"

    # the collection is deleted before the worker runs: the job fails for good, the message is consumed
    st, _ = call("DELETE", "/v1/collections/kb", principal=me)
    assert st == 200
    assert run_worker(receive_job_messages(aws_env)) == {"batchItemFailures": []}
    job_now = svc.jobs.get(job["id"])
    assert job_now.status == "failed" and job_now.error_code == "collection_not_found"


def test_poison_job_message_is_reported_not_swallowed(jobs_service):
    bad = {"MessageId": "m-1", "ReceiptHandle": "rh", "Body": '{"job_id": 5}'}
    assert run_worker([bad]) == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}


def test_upload_ceiling_is_413(jobs_service, monkeypatch):
    monkeypatch.setattr(jobmod, "MAX_JOB_CHUNKS", 6)
    me = wallet()
    st, _ = call("POST", "/v1/collections", principal=me,
                 body=spec("kb", "faiss"))
    assert st == 201
    st, err = call("POST", "/v1/collections/kb/documents", principal=me,
                   body={"documents": corpus_docs(), "chunk_size": 40, "chunk_overlap": 0})
    assert st == 413 and err["error"]["code"] == "too_many_chunks" and "at most 6" in err["error"]["message"]


def test_default_store_follows_what_is_configured(aws_env, minilm, qdrant_path, rag_bucket, monkeypatch):
    import ig3.rag.wiring as wiring
    from ig3.rag.registry import DynamoRegistry
    from ig3.rag.service import CollectionsService

    only_faiss = CollectionsService(DynamoRegistry(aws_env[table_env("rag_collections")]),
                                    {"faiss": make_store("faiss", qdrant_path, rag_bucket)}, minilm)
    monkeypatch.setattr(wiring, "collections_service", lambda: only_faiss)
    me = wallet()
    st, body = call("POST", "/v1/collections", principal=me,
                    body=spec("kb"))
    assert st == 201 and body["store"] == "faiss"
    st, err = call("POST", "/v1/collections", principal=me,
                   body=spec("kb2", "qdrant"))
    assert st == 400 and err["error"]["code"] == "store_unavailable" and "faiss" in err["error"]["message"]
    st, _ = call("GET", "/v1/collections/kb2", principal=me)
    assert st == 404  # nothing half-created

    none = CollectionsService(DynamoRegistry(aws_env[table_env("rag_collections")]), {}, minilm)
    monkeypatch.setattr(wiring, "collections_service", lambda: none)
    st, err = call("POST", "/v1/collections", principal=me,
                   body=spec("kb3"))
    assert st == 503 and err["error"]["code"] == "store_unavailable"
    # and an explicit default must be one that is configured
    with pytest.raises(ValueError):
        CollectionsService(DynamoRegistry("t"), {"faiss": object()}, minilm, default_store="qdrant")
