"""RAG storage metering end to end: the collections service (registry in the moto server, Faiss on
S3, real MiniLM embeddings, a controlled clock) closes storage intervals; its RagStorageChanged
events go on the real bus, the topology's rule routes them to the billing queue, and the billing
function charges each interval exactly once, in integer micro-credits, however often it is
redelivered."""

from __future__ import annotations

import json
import uuid
from decimal import ROUND_CEILING, Decimal

import boto3
import pytest

from ig3.events import EventBridgePublisher
from ig3.local.lambda_runtime import LambdaContext
from ig3.local.pollers import sqs_event
from ig3.rag.models import AddDocuments, CreateCollection, DeleteDocuments
from ig3.topology import table_env

from .conftest import make_store

pytestmark = pytest.mark.integration

DAY_MS = 24 * 3600 * 1000
MONTH_MS = 30 * DAY_MS
# 3 micro-credits per byte-month: 2 vectors x 384 floats x 4 bytes for 10 days = 3,072 exactly.
RATE = 3 * 2**30


class Clock:
    def __init__(self, ms: int):
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def drain(sqs, url):
    out = []
    for _ in range(30):
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        msgs = got.get("Messages", [])
        if not msgs:
            return out
        out += msgs
        for m in msgs:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return out


def test_storage_intervals_are_billed_exactly_once(
    aws_env, minilm, qdrant_path, rag_bucket, tmp_path, monkeypatch
):
    from ig3.billing.pricing import DEFAULT_PRICING_PATH
    from ig3.billing.wiring import billing_service
    from ig3.rag.registry import DynamoRegistry
    from ig3.rag.service import CollectionsService
    from ig3_functions.billing.handler import handler as billing_handler

    book = json.loads(DEFAULT_PRICING_PATH.read_text())
    book["storage"] = {"vector_gib_month": str(RATE)}
    (tmp_path / "pricing.json").write_text(json.dumps(book))
    monkeypatch.setenv("IG3_PRICING_PATH", str(tmp_path / "pricing.json"))
    billing_service.cache_clear()
    try:
        billing = billing_service()
        clock = Clock(1_800_000_000_000)
        svc = CollectionsService(
            DynamoRegistry(aws_env[table_env("rag_collections")]),
            {"faiss": make_store("faiss", qdrant_path, rag_bucket)},
            minilm,
            EventBridgePublisher(aws_env["IG3_EVENT_BUS"], client=boto3.client("events")),
            clock_ms=clock,
        )
        me = "0x" + uuid.uuid4().hex
        billing.credit(me, 1_000_000, f"dep-{me}")
        svc.create(me, CreateCollection(name="kb", embedding_model="all-MiniLM-L6-v2", dimension=384))
        clock.ms += DAY_MS  # an empty day: nothing to bill
        docs = [{"id": "a", "text": "Tides follow the Moon."}, {"id": "b", "text": "Yeast raises bread."}]
        svc.add_documents(me, "kb", AddDocuments.model_validate({"documents": docs}))
        clock.ms += 10 * DAY_MS  # 2 vectors for 10 days
        svc.delete_documents(me, "kb", DeleteDocuments(ids=["b"]))
        clock.ms += 5 * DAY_MS  # 1 vector for 5 days, closed by the hourly meter
        assert svc.close_storage_intervals() >= 1
        clock.ms += DAY_MS  # 1 vector for 1 day, closed by deleting the collection
        svc.delete(me, "kb")

        sqs = boto3.client("sqs")
        # The topology's rule routes RagStorageChanged to the billing queue (next to the embedding
        # usage this in-process model produced, which billing charges on its own path).
        messages = [m for m in drain(sqs, aws_env["IG3_QUEUE_BILLING_URL"])
                    if me in m["Body"] and json.loads(m["Body"])["detail-type"] == "RagStorageChanged"]
        bodies = [json.loads(m["Body"]) for m in messages]
        assert len(bodies) == 4
        intervals = sorted((b["detail"]["interval"] for b in bodies), key=lambda i: i["from_ms"])
        # The intervals tile the collection's life: no gap, no overlap.
        assert all(x["to_ms"] == y["from_ms"] for x, y in zip(intervals, intervals[1:]))
        assert intervals[-1]["to_ms"] - intervals[0]["from_ms"] == 17 * DAY_MS

        ctx = LambdaContext(function_name="billing", aws_request_id=uuid.uuid4().hex)
        event = sqs_event(messages, "arn:aws:sqs:us-east-1:123456789012:billing", "us-east-1")
        assert billing_handler(event, ctx) == {"batchItemFailures": []}
        assert billing_handler(event, ctx) == {"batchItemFailures": []}  # redelivered: no second charge

        def cost(vectors: int, ms: int) -> int:
            exact = Decimal(vectors * 384 * 4) * Decimal(ms) * Decimal(RATE) / (Decimal(2**30) * MONTH_MS)
            return int(exact.to_integral_value(rounding=ROUND_CEILING))

        expected = [cost(2, 10 * DAY_MS), cost(1, 5 * DAY_MS), cost(1, DAY_MS)]
        assert expected == [3072, 768, 154]  # the last one is 153.6, rounded up once
        entries, _ = billing.usage(me, limit=50)
        storage = sorted((e for e in entries if e.details.get("usage_kind") == "storage"),
                         key=lambda e: e.details["from_ms"])
        assert [-e.amount for e in storage] == expected
        assert all(e.details["model"] == "rag-storage:faiss" for e in storage)
        assert billing.balance(me).total == 1_000_000 - sum(expected)
    finally:
        billing_service.cache_clear()
