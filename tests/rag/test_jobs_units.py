"""Pure parts of ingestion jobs and storage metering: batch planning, interval tiling, pricing."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ig3.billing.pricing import PriceBook
from ig3.billing.storage import RagStorageChanged, storage_cost
from ig3.rag import jobs as jobmod
from ig3.rag.models import AddDocuments
from ig3.rag.registry import CollectionRecord, MemoryRegistry
from ig3.rag.service import doc_id_of


def test_plan_batches_whole_documents_deterministically(monkeypatch):
    monkeypatch.setattr(jobmod, "BATCH_CHUNKS", 5)
    req = AddDocuments.model_validate({"documents": [
        {"id": "a", "text": " ".join(["x"] * 6)},  # 3 chunks of 2 words
        {"id": "b", "text": " ".join(["y"] * 4)},  # 2
        {"id": "c", "text": " ".join(["z"] * 8)},  # 4
        {"text": "same text"}, {"text": "same text"},  # one content-hash id, kept once
    ]})
    ids, batches = jobmod.plan(req, 2, 0, doc_id_of)
    again = jobmod.plan(req, 2, 0, doc_id_of)[1]
    assert [b.doc_ids for b in batches] == [b.doc_ids for b in again]
    assert ids[:3] == ["a", "b", "c"] and len(ids) == 4 and ids[3].startswith("sha256:")
    assert [b.doc_ids for b in batches] == [["a", "b"], ["c", ids[3]]]
    assert [len(b.chunks) for b in batches] == [5, 5]
    # no document is split across batches, so "delete the batch's documents, upsert" is idempotent
    seen = [d for b in batches for d in b.doc_ids]
    assert len(seen) == len(set(seen))


def test_a_document_larger_than_a_batch_is_one_batch(monkeypatch):
    monkeypatch.setattr(jobmod, "BATCH_CHUNKS", 2)
    req = AddDocuments.model_validate({"documents": [{"id": "big", "text": " ".join(["w"] * 10)}]})
    _, batches = jobmod.plan(req, 2, 0, doc_id_of)
    assert len(batches) == 1 and len(batches[0].chunks) == 5


def test_storage_intervals_tile_time_even_when_a_clock_is_behind():
    reg = MemoryRegistry()
    rec = CollectionRecord("0xabc", "kb", "u" * 32, "faiss", "m", 4, "cosine", 10, 2, created_at=100.0)
    reg.create(rec)
    a = reg.add_chunks("0xabc", "kb", rec.uid, 3, now_ms=150_000)
    b = reg.add_chunks("0xabc", "kb", rec.uid, 0, now_ms=140_000)  # a writer whose clock is behind
    c = reg.add_chunks("0xabc", "kb", rec.uid, -1, now_ms=200_000)
    assert (a.from_ms, a.to_ms, a.vectors, a.vectors_after) == (100_000, 150_000, 0, 3)
    assert (b.from_ms, b.to_ms) == (150_000, 150_000)  # zero length, never backwards
    assert (c.from_ms, c.to_ms, c.vectors, c.vectors_after) == (150_000, 200_000, 3, 2)
    # a job batch's token applies once
    assert reg.add_chunks("0xabc", "kb", rec.uid, 5, now_ms=210_000, token=("j1", 0)) is not None
    assert reg.add_chunks("0xabc", "kb", rec.uid, 5, now_ms=220_000, token=("j1", 0)) is None
    assert reg.get("0xabc", "kb").chunks == 7
    assert reg.add_chunks("0xabc", "kb", "other-uid", 1, now_ms=230_000) is None  # re-created: not ours


def test_storage_cost_is_exact_and_rounded_up_once():
    book = PriceBook({"default": {"edge": {}, "cloud": {}}, "storage": {"vector_gib_month": str(3 * 2**30)}})
    month = 30 * 24 * 3600 * 1000
    assert storage_cost(book, 1536, month // 30) == 154  # 153.6
    assert storage_cost(book, 3072, month // 3) == 3072
    assert storage_cost(book, 0, month) == 0 and storage_cost(book, 10, 0) == 0
    free = PriceBook({"default": {"edge": {}, "cloud": {}}})
    assert free.storage_vector_gib_month == Decimal(0) and storage_cost(free, 2**30, month) == 0
    with pytest.raises(ValueError):
        PriceBook({"default": {"edge": {}, "cloud": {}}, "storage": {"per_gb": "1"}})


def test_storage_event_request_id_names_the_interval():
    e = RagStorageChanged.model_validate({
        "account": "0xABC", "collection": "kb", "collection_uid": "a" * 32, "store": "faiss",
        "interval": {"from_ms": 5, "to_ms": 9, "vector_bytes": 100},
    })
    assert e.request_id == f"storage:{'a' * 32}:5" and e.account == "0xabc"
