"""Asynchronous ingestion of large uploads: job records, the stored upload, the job queue.

Flow: ``POST /v1/collections/{name}/documents`` with more chunks than a synchronous request takes
answers ``202`` with a job; the rag function stores the request in the ``rag`` bucket
(``rag/uploads/<job>.json``), writes the job record (``rag_jobs``), and sends ``{"job_id"}`` to the
``rag_ingest`` queue. The ``rag_ingest`` worker (``CollectionsService.run_job``) chunks, embeds and
upserts the documents in batches of whole documents, checkpointing after each batch;
``GET /v1/collections/{name}/jobs/{id}`` shows its progress.

At-least-once, no duplicates: chunk ids are ``<doc>#<n>`` and every batch first removes its
documents' chunks, so a redone batch replaces exactly what it wrote; the collection's chunk
count moves once per batch (the registry update is conditional on the job's batch token,
``ig3.rag.registry``); the job's checkpoint (``next_batch``) and the batch's pre-existing chunk
count (``pending_pre``, measured before anything is written) survive a crash, so a
redelivered message resumes where the last one stopped.

Adapters here talk to AWS through ``ig3.aws`` clients, created lazily; the planning is pure.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import orjson

from ig3.rag.chunking import Chunk, chunk_text
from ig3.rag.models import AddDocuments

JobStatus = Literal["queued", "running", "succeeded", "failed"]
BATCH_CHUNKS = 256  # chunks embedded + upserted per checkpoint
MAX_JOB_CHUNKS = 200_000  # one upload's ceiling (~300 MB of 384-float vectors)
JOB_TTL_S = 30 * 24 * 3600
UPLOAD_PREFIX = "rag/uploads/"


@dataclass
class JobRecord:
    job_id: str
    owner: str
    collection: str
    collection_uid: str
    status: JobStatus
    documents: int
    chunks_total: int
    batches_total: int
    chunk_size: int
    chunk_overlap: int
    upload_key: str
    key_id: str = ""
    next_batch: int = 0  # batches [0, next_batch) are applied
    chunks_done: int = 0
    replaced_chunks: int = 0
    embedding_tokens: int = 0
    pending_batch: int = -1  # the batch whose pre-existing chunk count was measured...
    pending_pre: int = 0  # ...and that count
    error_code: str = ""
    error_message: str = ""
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    expires_at: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in ("succeeded", "failed")

    def public_view(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "object": "collection.ingestion_job",
            "id": self.job_id,
            "collection": self.collection,
            "status": self.status,
            "documents": self.documents,
            "chunks_total": self.chunks_total,
            "chunks_done": self.chunks_done,
            "replaced_chunks": self.replaced_chunks,
            "embedding_tokens": self.embedding_tokens,
            "progress": round(self.chunks_done / self.chunks_total, 4) if self.chunks_total else 1.0,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if self.error_code:
            out["error"] = {"code": self.error_code, "message": self.error_message}
        return out


def new_job_id() -> str:
    return "ingest_" + uuid.uuid4().hex


@dataclass(frozen=True)
class PlannedBatch:
    doc_ids: list[str]
    chunks: list[tuple[str, Chunk, dict[str, Any]]]  # (doc id, chunk, metadata)


def plan(req: AddDocuments, size: int, overlap: int, doc_id) -> tuple[list[str], list[PlannedBatch]]:
    """(document ids in order, batches of whole documents of about ``BATCH_CHUNKS`` chunks).

    Deterministic for the same upload: a redelivered job sees the same batches. A document id
    given twice (the same text without an id) keeps its last version, as sequential requests would.
    """
    docs: dict[str, Any] = {}
    for d in req.documents:
        docs.pop(doc_id(d), None)
        docs[doc_id(d)] = d
    batches: list[PlannedBatch] = []
    cur = PlannedBatch([], [])
    for did, d in docs.items():
        chunks = [(did, c, d.metadata) for c in chunk_text(d.text, size, overlap)]
        if cur.chunks and len(cur.chunks) + len(chunks) > BATCH_CHUNKS:
            batches.append(cur)
            cur = PlannedBatch([], [])
        cur.doc_ids.append(did)
        cur.chunks.extend(chunks)
    if cur.doc_ids:
        batches.append(cur)
    return list(docs), batches


# ------------------------------------------------------------------------------------- ports
class JobStore(Protocol):
    def create(self, job: JobRecord) -> None: ...
    def get(self, job_id: str) -> JobRecord | None: ...
    def delete(self, job_id: str) -> None: ...
    def update(self, job_id: str, *, expect_next_batch: int | None = None, **fields: Any) -> bool: ...


class UploadStore(Protocol):
    def put(self, key: str, body: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...


class JobQueue(Protocol):
    def send(self, job_id: str) -> None: ...


# ---------------------------------------------------------------------------------- adapters
def _client(name: str, given: Any) -> Any:
    if given is not None:
        return given
    from ig3.aws import client

    return client(name)


_INT_FIELDS = {k for k, f in JobRecord.__dataclass_fields__.items() if f.type in ("int", int)}


class DynamoJobStore:
    """The ``rag_jobs`` table (pk ``job_id``, TTL ``expires_at``)."""

    def __init__(self, table: str, client: Any | None = None):
        self.table = table
        self._client = client

    @property
    def client(self) -> Any:
        self._client = _client("dynamodb", self._client)
        return self._client

    @staticmethod
    def _value(v: Any) -> dict[str, Any]:
        return {"N": str(v)} if isinstance(v, (int, float)) and not isinstance(v, bool) else {"S": str(v)}

    def create(self, job: JobRecord) -> None:
        if not job.expires_at:
            job.expires_at = int(job.created_at) + JOB_TTL_S
        self.client.put_item(
            TableName=self.table,
            Item={k: self._value(v) for k, v in asdict(job).items()},
            ConditionExpression="attribute_not_exists(job_id)",
        )

    def get(self, job_id: str) -> JobRecord | None:
        r = self.client.get_item(TableName=self.table, Key={"job_id": {"S": job_id}}, ConsistentRead=True)
        item = r.get("Item")
        if item is None:
            return None
        d: dict[str, Any] = {}
        for k, v in item.items():
            if k not in JobRecord.__dataclass_fields__:
                continue
            if "N" in v:
                d[k] = int(v["N"]) if k in _INT_FIELDS else float(v["N"])
            else:
                d[k] = v["S"]
        return JobRecord(**d)

    def delete(self, job_id: str) -> None:
        self.client.delete_item(TableName=self.table, Key={"job_id": {"S": job_id}})

    def update(self, job_id: str, *, expect_next_batch: int | None = None, **fields: Any) -> bool:
        """Set ``fields`` (``updated_at`` too); False when ``next_batch`` was not the expected one."""
        fields["updated_at"] = time.time()
        names = {f"#f{i}": k for i, k in enumerate(fields)}
        values = {f":v{i}": self._value(v) for i, v in enumerate(fields.values())}
        cond = "attribute_exists(job_id)"
        if expect_next_batch is not None:
            names["#nb"] = "next_batch"
            values[":nb"] = {"N": str(expect_next_batch)}
            cond += " AND #nb = :nb"
        try:
            self.client.update_item(
                TableName=self.table,
                Key={"job_id": {"S": job_id}},
                UpdateExpression="SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(fields))),
                ConditionExpression=cond,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True


class S3UploadStore:
    def __init__(self, bucket: str, client: Any | None = None):
        self.bucket = bucket
        self._client = client

    @property
    def client(self) -> Any:
        self._client = _client("s3", self._client)
        return self._client

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)


class SqsJobQueue:
    def __init__(self, queue_url: str, client: Any | None = None):
        self.queue_url = queue_url
        self._client = client

    @property
    def client(self) -> Any:
        self._client = _client("sqs", self._client)
        return self._client

    def send(self, job_id: str) -> None:
        body = orjson.dumps({"job_id": job_id}).decode()
        self.client.send_message(QueueUrl=self.queue_url, MessageBody=body)


def parse_job_message(body: str | bytes) -> str:
    """The job id of a ``rag_ingest`` message; ValueError for anything else."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("rag_ingest message is not JSON") from None
    job_id = doc.get("job_id") if isinstance(doc, dict) else None
    if not isinstance(job_id, str) or not job_id.startswith("ingest_") or len(job_id) > 64:
        raise ValueError("rag_ingest message has no valid job_id")
    return job_id
