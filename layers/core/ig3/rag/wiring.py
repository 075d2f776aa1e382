"""Builds the collections service from the environment, once per process.

- ``IG3_TABLE_RAG_COLLECTIONS``: the collection registry (topology table ``rag_collections``).
- Qdrant: ``IG3_QDRANT_URL`` (+ ``IG3_QDRANT_API_KEY``; ``IG3_QDRANT_TIMEOUT_S``, 10) for a server,
  over its REST API with the standard library (``QdrantRestStore``: no qdrant-client in the Lambda
  packages), else ``IG3_QDRANT_PATH`` for qdrant-client's embedded local mode (the local cloud;
  ``:memory:`` keeps nothing; qdrant-client is in the ``rag-local`` group). Neither: no Qdrant store.
- Faiss: the topology's ``rag`` bucket (``IG3_BUCKET_RAG``; ``IG3_RAG_BUCKET`` overrides it) holding
  the indexes under ``IG3_RAG_PREFIX``; ``IG3_RAG_FAISS_REVALIDATE_S`` (0): how stale a warm
  function's cached index may be. Searched with numpy (``FlatIndex``); faiss is not needed.
- ``IG3_RAG_DEFAULT_STORE``: the store of collections created without one (default: Qdrant where
  configured, else Faiss).
- Large uploads: the ``rag_jobs`` table, the ``rag`` bucket (``rag/uploads/``) and the
  ``rag_ingest`` queue; where any is missing, uploads over the synchronous limit are refused (413).
- Embeddings: the AI gateway's task path (``ig3.tasks``), or ``IG3_RAG_LOCAL_EMBEDDER=minilm``
  for the in-process all-MiniLM-L6-v2 (local cloud only: torch is never in a Lambda package).
"""

from __future__ import annotations

import os
from functools import lru_cache

from ig3 import config
from ig3.rag.service import CollectionsService


def rag_bucket() -> str | None:
    from ig3.topology import bucket_env

    return os.environ.get("IG3_RAG_BUCKET") or os.environ.get(bucket_env("rag")) or None


def stores_from_env() -> dict:
    from ig3.rag.stores import FaissS3Store, QdrantRestStore, QdrantStore

    stores: dict = {}
    e = os.environ.get
    if e("IG3_QDRANT_URL"):
        stores["qdrant"] = QdrantRestStore(e("IG3_QDRANT_URL"), api_key=e("IG3_QDRANT_API_KEY") or None,
                                           timeout_s=float(e("IG3_QDRANT_TIMEOUT_S", "10")))
    elif e("IG3_QDRANT_PATH"):
        stores["qdrant"] = QdrantStore(path=e("IG3_QDRANT_PATH"))
    if rag_bucket():
        stores["faiss"] = FaissS3Store(
            rag_bucket(),
            prefix=e("IG3_RAG_PREFIX", "rag/faiss/"),
            revalidate_s=float(e("IG3_RAG_FAISS_REVALIDATE_S", "0")),
        )
    return stores


def embedder_from_env():
    if os.environ.get("IG3_RAG_LOCAL_EMBEDDER") == "minilm":
        from ig3.rag.embedders import LocalModelEmbedder

        return LocalModelEmbedder.minilm()
    from ig3.rag.embedders import TaskEmbedder
    from ig3.redis_client import get_blocking_redis
    from ig3.tasks.notify import wait_terminal
    from ig3.tasks.wiring import task_service

    return TaskEmbedder(task_service(), lambda task_id, s: wait_terminal(get_blocking_redis(), task_id, s))


@lru_cache(maxsize=1)
def collections_service() -> CollectionsService:
    from ig3.events import EventBridgePublisher
    from ig3.rag.registry import DynamoRegistry

    from ig3.rag.jobs import DynamoJobStore, S3UploadStore, SqsJobQueue
    from ig3.topology import queue_env, table_env

    e = os.environ.get
    async_parts = {}
    if e(table_env("rag_jobs")) and e(queue_env("rag_ingest")) and rag_bucket():
        async_parts = {
            "jobs": DynamoJobStore(e(table_env("rag_jobs"))),
            "uploads": S3UploadStore(rag_bucket()),
            "job_queue": SqsJobQueue(e(queue_env("rag_ingest"))),
        }
    return CollectionsService(
        DynamoRegistry(config.table_name("rag_collections")),
        stores_from_env(),
        _LazyEmbedder(),
        EventBridgePublisher(config.event_bus()),
        default_store=e("IG3_RAG_DEFAULT_STORE") or None,
        **async_parts,
    )


class _LazyEmbedder:
    """The embedder, built on first use: the hourly meter and job-status reads never load a model."""

    def __init__(self) -> None:
        self._embedder = None

    def embed(self, *args, **kwargs):
        if self._embedder is None:
            self._embedder = embedder_from_env()
        return self._embedder.embed(*args, **kwargs)
