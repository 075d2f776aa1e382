"""The collections service: ownership, ingestion, deletion, retrieval, metering.

- Ownership: every call takes the caller's wallet; records are keyed by (owner, name), and the
  store-side space name is derived from owner + name + a per-creation uid. Another wallet's
  collection is indistinguishable from a missing one (404, never 403: no existence oracle).
- Stores: a collection names its store (``qdrant`` or ``faiss``); without one it gets the
  gateway's default — ``default_store`` when given, else Qdrant where it is configured, else
  Faiss — so a local cloud with only Faiss works without the client knowing. Asking for a store
  this gateway does not run is a 400 (``store_unavailable``) naming the ones it does.
- Ingestion, synchronous for uploads of at most ``max_sync_chunks`` chunks: chunk -> embed
  through the ``Embedder`` (the network) -> upsert. Idempotent: a document's chunks have ids
  ``<doc>#<n>`` and re-adding a document first deletes its old chunks, so a retried request
  converges to the same state. Documents without an id get a content hash as id, so the same
  text sent twice is stored once.
- Larger uploads (up to ``MAX_JOB_CHUNKS``) become an ingestion job (``ig3.rag.jobs``): 202 with
  the job, the upload stored in S3, the job queued; ``run_job`` (the ``rag_ingest`` worker) applies
  it in checkpointed batches, at-least-once without duplicates.
- Metering: embedding work that the network already billed (a task) is not billed again;
  embeddings computed elsewhere emit a ``UsageRecorded`` (kind ``embedding``). Storage: every
  change of the vector count closes the collection's storage interval (``ig3.rag.registry``) and
  emits ``RagStorageChanged`` with it; ``close_storage_intervals`` (hourly) closes the intervals
  of collections that did not change. Billing prices vector-byte-time (``ig3.billing.storage``).
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from typing import Any

import orjson

from ig3.errors import BadRequest, DomainError, NotFound, PayloadTooLarge, Unavailable, UnprocessableEntity
from ig3.events import DomainEvent, EventPublisher
from ig3.rag import jobs as jobmod
from ig3.rag.chunking import chunk_text
from ig3.rag.embedders import Embedder
from ig3.rag.jobs import JobQueue, JobRecord, JobStore, UploadStore
from ig3.rag.models import AddDocuments, CreateCollection, DeleteDocuments, Document, MetaFilter, Query
from ig3.rag.registry import CollectionRecord, CollectionRegistry, StorageInterval
from ig3.rag.stores import Filter, Hit, Point, SpaceNotFound, VectorStore, space_name

MAX_SYNC_CHUNKS = 512
MAX_COLLECTIONS_PER_OWNER = 100
STORE_PREFERENCE = ("qdrant", "faiss")  # the default store: the first one configured here
log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


def doc_id_of(doc: Document) -> str:
    return doc.id or "sha256:" + hashlib.sha256(doc.text.encode()).hexdigest()[:32]


class JobFailed(Exception):
    """A job that cannot succeed however often it is retried (recorded as failed, not retried)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def store_filter(flt: MetaFilter | None) -> Filter | None:
    """API metadata filter -> the store contract's filter over the payload's ``m`` object."""
    if not flt:
        return None
    return {f"m.{k}": (v if isinstance(v, list) else [v]) for k, v in flt.items()}


class CollectionsService:
    def __init__(
        self,
        registry: CollectionRegistry,
        stores: dict[str, VectorStore],
        embedder: Embedder,
        events: EventPublisher | None = None,
        *,
        jobs: JobStore | None = None,
        uploads: UploadStore | None = None,
        job_queue: JobQueue | None = None,
        default_store: str | None = None,
        max_sync_chunks: int = MAX_SYNC_CHUNKS,
        clock_ms=_now_ms,
    ):
        self.registry = registry
        self.stores = stores
        self.embedder = embedder
        self.events = events
        self.jobs = jobs
        self.uploads = uploads
        self.job_queue = job_queue
        self.max_sync_chunks = max_sync_chunks
        self.clock_ms = clock_ms
        if default_store is not None and default_store not in stores:
            configured = ", ".join(sorted(stores))
            raise ValueError(f"default store {default_store!r} is not configured ({configured})")
        self.default_store = default_store or next((n for n in STORE_PREFERENCE if n in stores), None)

    @property
    def async_ingestion(self) -> bool:
        return self.jobs is not None and self.uploads is not None and self.job_queue is not None

    # ------------------------------------------------------------------------------ collections
    def create(self, owner: str, spec: CreateCollection) -> CollectionRecord:
        store = spec.store or self.default_store
        if store is None:
            raise Unavailable("no vector store is configured on this gateway", code="store_unavailable")
        if store not in self.stores:
            raise BadRequest(
                f"store {store!r} is not available here (available: {', '.join(sorted(self.stores))})",
                code="store_unavailable",
            )
        if len(self.registry.list(owner)) >= MAX_COLLECTIONS_PER_OWNER:
            raise BadRequest(
                f"at most {MAX_COLLECTIONS_PER_OWNER} collections per wallet", code="too_many_collections"
            )
        rec = CollectionRecord(
            owner=owner,
            name=spec.name,
            uid=uuid.uuid4().hex,
            store=store,
            embedding_model=spec.embedding_model,
            dimension=spec.dimension,
            distance=spec.distance,
            chunk_size=spec.chunk_size,
            chunk_overlap=spec.chunk_overlap,
            metered_ms=self.clock_ms(),  # the first storage interval opens now
        )
        # The space first: a record never points at a space that does not exist. A space left by a
        # failed registry write is unreachable (its uid is in no record) and costs nothing to query.
        self.stores[rec.store].create(self._space(rec), rec.dimension, rec.distance)  # type: ignore[arg-type]
        try:
            self.registry.create(rec)
        except Exception:
            self.stores[rec.store].drop(self._space(rec))
            raise
        return rec

    def get(self, owner: str, name: str) -> CollectionRecord:
        rec = self.registry.get(owner, name)
        if rec is None:
            raise NotFound(f"no collection named {name!r}", code="collection_not_found")
        return rec

    def list(self, owner: str) -> list[CollectionRecord]:
        return self.registry.list(owner)

    def delete(self, owner: str, name: str) -> CollectionRecord:
        rec = self.registry.delete(owner, name)
        if rec is None:
            raise NotFound(f"no collection named {name!r}", code="collection_not_found")
        self.stores[rec.store].drop(self._space(rec))
        # The deletion closes the last storage interval (the record's state just before it went).
        start = rec.interval_start_ms
        last = StorageInterval(start, max(self.clock_ms(), start), rec.chunks, 0)
        self._storage_event(rec, -rec.chunks, last)
        return rec

    @staticmethod
    def _space(rec: CollectionRecord) -> str:
        return space_name(rec.owner, rec.name, rec.uid)

    def _store(self, rec: CollectionRecord) -> VectorStore:
        store = self.stores.get(rec.store)
        if store is None:
            raise UnprocessableEntity(
                f"this collection's store {rec.store!r} is not available here", code="store_unavailable"
            )
        return store

    # ------------------------------------------------------------------------------- documents
    def _chunking(self, rec: CollectionRecord, req: AddDocuments) -> tuple[int, int]:
        size = req.chunk_size or rec.chunk_size
        overlap = rec.chunk_overlap if req.chunk_overlap is None else req.chunk_overlap
        if req.chunk_size is not None and req.chunk_overlap is None:
            overlap = min(overlap, size - 1)
        if overlap >= size:
            raise BadRequest("chunk_overlap must be smaller than chunk_size", code="validation_error")
        return size, overlap

    def add_documents(
        self, owner: str, name: str, req: AddDocuments, *, key_id: str | None = None
    ) -> dict[str, Any]:
        """Synchronous ingestion, or — more than ``max_sync_chunks`` chunks — an ingestion job
        (the answer's ``object`` is then ``collection.ingestion_job``: the route answers 202)."""
        rec = self.get(owner, name)
        size, overlap = self._chunking(rec, req)
        planned: list[tuple[str, Any, dict[str, Any]]] = []  # (doc id, chunk, metadata)
        doc_ids: list[str] = []
        for doc in req.documents:
            doc_id = doc_id_of(doc)
            doc_ids.append(doc_id)
            for ch in chunk_text(doc.text, size, overlap):
                planned.append((doc_id, ch, doc.metadata))
        if len(planned) > self.max_sync_chunks:
            if self.async_ingestion and len(planned) <= jobmod.MAX_JOB_CHUNKS:
                job = self._submit_job(rec, req, size, overlap, doc_ids, len(planned), key_id)
                return {**job.public_view(), "ids": list(dict.fromkeys(doc_ids))}
            limit = jobmod.MAX_JOB_CHUNKS if self.async_ingestion else self.max_sync_chunks
            raise PayloadTooLarge(
                f"this upload makes {len(planned)} chunks; one upload takes at most {limit} "
                "(split it into several requests)",
                code="too_many_chunks",
            )
        emb = self.embedder.embed(
            rec.embedding_model, [c.text for _, c, _ in planned], account=owner, key_id=key_id
        )
        self._check_vectors(rec, emb.vectors, len(planned))
        points = self._points(planned, emb.vectors)
        store = self._store(rec)
        space = self._space(rec)
        try:
            replaced = store.delete(space, filter={"doc": list(dict.fromkeys(doc_ids))})
            store.upsert(space, points)
        except SpaceNotFound:
            raise NotFound(f"no collection named {name!r}", code="collection_not_found") from None
        delta = len(points) - replaced
        self._count(rec, delta)
        self._embedding_usage(rec, emb, key_id)
        return {
            "object": "collection.documents",
            "collection": name,
            "ids": doc_ids,
            "chunks": len(points),
            "replaced_chunks": replaced,
            "embedding_tokens": emb.tokens,
            "embedding_tasks": list(emb.task_ids),
        }

    @staticmethod
    def _points(planned: list[tuple[str, Any, dict[str, Any]]], vectors: list[list[float]]) -> list[Point]:
        return [
            Point(
                f"{d}#{c.index}",
                v,
                {"doc": d, "chunk": c.index, "text": c.text, "start": c.start, "end": c.end, "m": meta},
            )
            for (d, c, meta), v in zip(planned, vectors)
        ]

    def _count(self, rec: CollectionRecord, delta: int, token: tuple[str, int] | None = None) -> bool:
        """Move the chunk count (closing the storage interval); False when nothing was applied."""
        if not delta and token is None:
            return True
        interval = self.registry.add_chunks(
            rec.owner, rec.name, rec.uid, delta, now_ms=self.clock_ms(), token=token
        )
        if interval is None:
            return False
        self._storage_event(rec, delta, interval)
        return True

    # ---------------------------------------------------------------------------- ingestion jobs
    def _submit_job(
        self,
        rec: CollectionRecord,
        req: AddDocuments,
        size: int,
        overlap: int,
        doc_ids: list[str],
        chunks: int,
        key_id: str | None,
    ) -> JobRecord:
        assert self.jobs is not None and self.uploads is not None and self.job_queue is not None
        job_id = jobmod.new_job_id()
        _, batches = jobmod.plan(req, size, overlap, doc_id_of)
        job = JobRecord(
            job_id=job_id,
            owner=rec.owner,
            collection=rec.name,
            collection_uid=rec.uid,
            status="queued",
            documents=len(dict.fromkeys(doc_ids)),
            chunks_total=sum(len(b.chunks) for b in batches),
            batches_total=len(batches),
            chunk_size=size,
            chunk_overlap=overlap,
            upload_key=f"{jobmod.UPLOAD_PREFIX}{job_id}.json",
            key_id=key_id or "",
        )
        # Upload, then record, then message: a message never names a job or upload that does not
        # exist; if a later step fails the earlier ones are undone (nothing half-submitted).
        self.uploads.put(job.upload_key, orjson.dumps(req.model_dump(mode="json")))
        try:
            self.jobs.create(job)
            try:
                self.job_queue.send(job_id)
            except Exception:
                self.jobs.delete(job_id)
                raise
        except Exception:
            self.uploads.delete(job.upload_key)
            raise
        return job

    def get_job(self, owner: str, name: str, job_id: str) -> JobRecord:
        job = self.jobs.get(job_id) if self.jobs is not None and job_id.startswith("ingest_") else None
        if job is None or job.owner != owner or job.collection != name:
            raise NotFound(f"no ingestion job {job_id!r} for collection {name!r}", code="job_not_found")
        return job

    def run_job(self, job_id: str, *, final_attempt: bool = False) -> JobRecord | None:
        """Apply a job's remaining batches. Safe to run again for the same job (at-least-once).

        Permanent failures (collection gone, wrong vectors, the upload missing) mark the job
        failed and return; anything else raises so the message comes back — on the
        ``final_attempt`` (the queue's last receive before its DLQ) the job is marked failed first.
        """
        assert self.jobs is not None and self.uploads is not None
        job = self.jobs.get(job_id)
        if job is None or job.terminal:
            return job  # expired, or finished by an earlier delivery
        try:
            return self._run_job(job)
        except JobFailed as exc:
            return self._finish(job, "failed", exc.code, str(exc))
        except DomainError as exc:
            if exc.status < 500 and exc.status not in (409, 429):  # busy / rate-limited: worth a retry
                return self._finish(job, "failed", exc.code, str(exc))
            if final_attempt:
                self._finish(job, "failed", exc.code, str(exc))
            raise
        except Exception:
            if final_attempt:
                self._finish(job, "failed", "ingestion_failed", "ingestion kept failing; it was given up")
            raise

    def _run_job(self, job: JobRecord) -> JobRecord:
        assert self.jobs is not None and self.uploads is not None
        rec = self.registry.get(job.owner, job.collection)
        if rec is None or rec.uid != job.collection_uid:
            raise JobFailed("collection_not_found", f"collection {job.collection!r} was deleted")
        try:
            raw = self.uploads.get(job.upload_key)
        except Exception as exc:  # noqa: BLE001 — botocore NoSuchKey: map by its code
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404"):
                raise JobFailed("upload_missing", "the stored upload is gone") from None
            raise
        req = AddDocuments.model_validate(orjson.loads(raw))
        _, batches = jobmod.plan(req, job.chunk_size, job.chunk_overlap, doc_id_of)
        store = self._store(rec)
        space = self._space(rec)
        if job.status == "queued":
            self.jobs.update(job.job_id, status="running")
            job.status = "running"
        for b in range(job.next_batch, len(batches)):
            batch = batches[b]
            doc_filter: Filter = {"doc": list(batch.doc_ids)}
            try:
                if job.pending_batch != b:
                    # What this batch replaces, measured before it writes anything (kept for redelivery).
                    job.pending_pre = store.count(space, filter=doc_filter)
                    job.pending_batch = b
                    if not self.jobs.update(job.job_id, expect_next_batch=b, pending_batch=b,
                                            pending_pre=job.pending_pre):
                        raise RuntimeError("the job moved on meanwhile (another delivery is running it)")
                emb = self.embedder.embed(
                    rec.embedding_model, [c.text for _, c, _ in batch.chunks], account=rec.owner,
                    key_id=job.key_id or None,
                )
                self._check_vectors(rec, emb.vectors, len(batch.chunks))
                store.delete(space, filter=doc_filter)
                store.upsert(space, self._points(batch.chunks, emb.vectors))
            except SpaceNotFound:
                gone = f"collection {job.collection!r} was deleted"
                raise JobFailed("collection_not_found", gone) from None
            self._count(rec, len(batch.chunks) - job.pending_pre, token=(job.job_id, b))
            self._embedding_usage(rec, emb, job.key_id or None, request_id=f"{job.job_id}_{b}")
            job.next_batch = b + 1
            job.chunks_done += len(batch.chunks)
            job.replaced_chunks += job.pending_pre
            job.embedding_tokens += emb.tokens
            if not self.jobs.update(
                job.job_id, expect_next_batch=b, next_batch=b + 1, chunks_done=job.chunks_done,
                replaced_chunks=job.replaced_chunks, embedding_tokens=job.embedding_tokens,
            ):
                raise RuntimeError("the job moved on meanwhile (another delivery is running it)")
        done = self._finish(job, "succeeded")
        self.registry.forget_token(rec.owner, rec.name, rec.uid, job.job_id)
        return done

    def _finish(self, job: JobRecord, status: str, code: str = "", message: str = "") -> JobRecord:
        assert self.jobs is not None and self.uploads is not None
        job.status = status  # type: ignore[assignment]
        job.error_code, job.error_message = code, message
        self.jobs.update(job.job_id, status=status, error_code=code, error_message=message)
        try:
            self.uploads.delete(job.upload_key)  # the bucket's lifecycle rule catches what this misses
        except Exception:  # noqa: BLE001
            log.warning("rag job upload not deleted", extra={"job_id": job.job_id})
        return job

    def delete_documents(self, owner: str, name: str, req: DeleteDocuments) -> dict[str, Any]:
        rec = self.get(owner, name)
        flt = store_filter(req.filter) or {}
        if req.ids is not None:
            flt = {**flt, "doc": list(req.ids)}
        try:
            n = self._store(rec).delete(self._space(rec), filter=flt)
        except SpaceNotFound:
            raise NotFound(f"no collection named {name!r}", code="collection_not_found") from None
        if n:
            self._count(rec, -n)
        return {"object": "collection.documents.deleted", "collection": name, "deleted_chunks": n}

    # -------------------------------------------------------------------------------- retrieval
    def search(self, owner: str, name: str, q: Query, *, key_id: str | None = None) -> list[Hit]:
        rec = self.get(owner, name)
        emb = self.embedder.embed(rec.embedding_model, [q.query], account=owner, key_id=key_id)
        self._check_vectors(rec, emb.vectors, 1)
        try:
            hits = self._store(rec).query(
                self._space(rec),
                emb.vectors[0],
                top_k=q.top_k,
                score_threshold=q.score_threshold,
                filter=store_filter(q.filter),
            )
        except SpaceNotFound:
            raise NotFound(f"no collection named {name!r}", code="collection_not_found") from None
        self._embedding_usage(rec, emb, key_id)
        return hits

    @staticmethod
    def _check_vectors(rec: CollectionRecord, vectors: list[list[float]], n: int) -> None:
        if len(vectors) != n:
            raise UnprocessableEntity(
                f"the embedding model returned {len(vectors)} vectors for {n} texts",
                code="embedding_mismatch",
            )
        bad = next((len(v) for v in vectors if len(v) != rec.dimension), None)
        if bad is not None:
            raise UnprocessableEntity(
                f"model {rec.embedding_model!r} returns {bad}-dimensional vectors; "
                f"this collection holds {rec.dimension}",
                code="dimension_mismatch",
            )

    # --------------------------------------------------------------------------------- metering
    def _embedding_usage(
        self, rec: CollectionRecord, emb: Any, key_id: str | None, *, request_id: str | None = None
    ) -> None:
        if self.events is None or emb.metered or not emb.tokens:
            return
        rid = f"rag_{request_id or uuid.uuid4().hex}"  # a job batch's id is stable: redone, billed once
        detail: dict[str, Any] = {
            "request_id": rid,
            "account": rec.owner,
            "model": rec.embedding_model,
            "route": "cloud",
            "kind": "embedding",
            "prompt_tokens": int(emb.tokens),
            "completion_tokens": 0,
            "status": "completed",
        }
        if key_id:
            detail["key_id"] = key_id
        self.events.publish([DomainEvent("UsageRecorded", detail, event_id=f"usage:{rid}")])

    def close_storage_intervals(self) -> int:
        """The hourly meter: close every collection's open storage interval (vectors that sit
        unchanged are billed too). Returns how many intervals it closed with vectors in them."""
        closed = 0
        for rec in self.registry.scan():
            interval = self.registry.add_chunks(rec.owner, rec.name, rec.uid, 0, now_ms=self.clock_ms())
            if interval is not None and interval.vectors and interval.to_ms > interval.from_ms:
                self._storage_event(rec, 0, interval)
                closed += 1
        return closed

    def _storage_event(self, rec: CollectionRecord, delta: int, interval: StorageInterval) -> None:
        """``RagStorageChanged``: the closed interval (what billing charges) and the state after it.

        Its id names the interval (uid + start), which no other interval of the collection shares.
        """
        billable = interval.vectors and interval.to_ms > interval.from_ms
        if self.events is None or (not delta and not billable):
            return
        after = max(interval.vectors_after, 0)
        detail = {
            "account": rec.owner,
            "collection": rec.name,
            "collection_uid": rec.uid,
            "store": rec.store,
            "delta_vectors": delta,
            "vectors": after,
            "dimension": rec.dimension,
            "vector_bytes": after * rec.dimension * 4,
            "interval": {
                "from_ms": interval.from_ms,
                "to_ms": interval.to_ms,
                "vectors": max(interval.vectors, 0),
                "vector_bytes": max(interval.vectors, 0) * rec.dimension * 4,
            },
            "at": interval.to_ms / 1000,
        }
        eid = f"ragstorage:{rec.uid}:{interval.from_ms}"
        self.events.publish([DomainEvent("RagStorageChanged", detail, event_id=eid)])
