"""The /v1/collections API through the rag function (API Gateway proxy events), with the real
registry table in the moto server, both stores, and REAL embeddings (all-MiniLM-L6-v2).

Retrieval quality: a small corpus written here, queries whose right document is known; recall@1
and recall@3 are asserted on both stores."""

from __future__ import annotations

import uuid

import orjson
import pytest

from ig3.api.http import Principal
from ig3.billing.models import UsageRecorded
from ig3.events import MemoryEventPublisher
from ig3.local.front import principal_context, proxy_event
from ig3.local.lambda_runtime import LambdaContext
from ig3.topology import TOPOLOGY

from .conftest import make_store

pytestmark = pytest.mark.integration

# Ten documents on distinct subjects, each with a question only it answers (none shares the answer's words).
CORPUS = {
    "volcano": "Mount Etna on Sicily is one of the most active volcanoes in the world; its eruptions send lava "
    "flows and ash clouds over Catania.",
    "bread": "Sourdough bread rises because wild yeast and lactic acid bacteria in the starter ferment the dough "
    "for many hours before baking.",
    "chess": "In chess, castling moves the king two squares towards a rook, and the rook jumps over to the other side "
    "of the king.",
    "tides": "Ocean tides are caused mainly by the gravitational pull of the Moon, with the Sun adding spring and "
    "neap variations.",
    "bitcoin": "Bitcoin miners compete to find a nonce so that the block header's SHA-256 hash falls below the "
    "network difficulty target.",
    "photosynthesis": "Plants turn sunlight, water and carbon dioxide into glucose and oxygen in their chloroplasts, "
    "a process called photosynthesis.",
    "marathon": "A marathon race covers 42.195 kilometres; the distance was fixed at the 1908 London Olympics.",
    "vaccine": "Vaccines train the immune system by exposing it to a harmless piece of a pathogen so that antibodies "
    "are ready before a real infection.",
    "jazz": "Jazz grew out of New Orleans in the early twentieth century, mixing blues, ragtime and brass band music "
    "with improvisation.",
    "rust": "Iron rusts when it reacts with oxygen and moisture, forming hydrated iron oxide that flakes away from "
    "the metal surface.",
}
QUESTIONS = [
    ("Which mountain in Italy keeps erupting?", "volcano"),
    ("How does a starter make dough rise?", "bread"),
    ("What special move can a king make with a rook?", "chess"),
    ("Why does the sea level go up and down twice a day?", "tides"),
    ("How is a new block found in a cryptocurrency?", "bitcoin"),
    ("How do green leaves make sugar from light?", "photosynthesis"),
    ("How long is the running race from the Olympics?", "marathon"),
    ("How do immunisations protect people from disease?", "vaccine"),
    ("Where did improvised swing music begin?", "jazz"),
    ("Why do old steel tools turn orange and crumble?", "rust"),
]


def call(method, path, *, principal, body=None):
    import importlib

    params = {}
    route = None
    for r in TOPOLOGY.routes:
        if r.method != method:
            continue
        rp, pp = r.path.strip("/").split("/"), path.strip("/").split("/")
        if len(rp) == len(pp) and all(a == b or a.startswith("{") for a, b in zip(rp, pp)):
            route = r
            params = {a[1:-1]: b for a, b in zip(rp, pp) if a.startswith("{")}
            break
    assert route is not None, f"no topology route for {method} {path}"
    raw = body if isinstance(body, bytes) else (orjson.dumps(body) if body is not None else b"")
    event = proxy_event(
        route=route,
        method=method,
        path=path,
        params=params,
        headers=[(b"host", b"api"), (b"content-type", b"application/json")],
        query="",
        body=raw,
        client=None,
        authorizer=principal_context(principal) if principal else None,
    )
    # the function the topology routes it to (the rag function), by its declared handler
    fn = TOPOLOGY.function(route.function)
    module, attr = fn.handler.split(":")
    handler = getattr(importlib.import_module(module), attr)
    resp = handler(event, LambdaContext(function_name=fn.name, aws_request_id=uuid.uuid4().hex))
    return resp["statusCode"], orjson.loads(resp["body"]) if resp["body"] else None


def wallet() -> Principal:
    return Principal(
        subject="0x" + uuid.uuid4().hex + uuid.uuid4().hex[:8], kind="wallet", scopes=frozenset({"*"})
    )


@pytest.fixture
def service(aws_env, minilm, qdrant_path, rag_bucket, monkeypatch):
    import ig3.rag.wiring as wiring
    from ig3.config import table_name
    from ig3.rag.registry import DynamoRegistry
    from ig3.rag.service import CollectionsService

    events = MemoryEventPublisher()
    svc = CollectionsService(
        DynamoRegistry(table_name("rag_collections")),
        {
            "qdrant": make_store("qdrant", qdrant_path, rag_bucket),
            "faiss": make_store("faiss", qdrant_path, rag_bucket),
        },
        minilm,
        events,
    )
    monkeypatch.setattr(wiring, "collections_service", lambda: svc)
    return svc, events


@pytest.mark.parametrize("store", ["qdrant", "faiss"])
def test_retrieval_quality_with_real_embeddings(service, store):
    _, events = service
    me = wallet()
    st, body = call(
        "POST",
        "/v1/collections",
        principal=me,
        body={"name": "kb", "embedding_model": "all-MiniLM-L6-v2", "dimension": 384, "store": store},
    )
    assert st == 201, body
    docs = [
        {
            "id": k,
            "text": v,
            "metadata": {"topic": k, "science": k in ("tides", "photosynthesis", "vaccine", "rust")},
        }
        for k, v in CORPUS.items()
    ]
    st, body = call("POST", "/v1/collections/kb/documents", principal=me, body={"documents": docs})
    assert st == 200, body
    assert body["chunks"] == len(CORPUS) and body["embedding_tokens"] > 100

    hits1 = hits3 = 0
    for question, answer in QUESTIONS:
        st, body = call(
            "POST", "/v1/collections/kb/query", principal=me, body={"query": question, "top_k": 3}
        )
        assert st == 200, body
        ranked = [d["document"] for d in body["data"]]
        assert len(ranked) == 3 and body["data"][0]["text"] == CORPUS[ranked[0]]
        hits1 += ranked[0] == answer
        hits3 += answer in ranked
    recall1, recall3 = hits1 / len(QUESTIONS), hits3 / len(QUESTIONS)
    assert recall1 >= 0.8, recall1
    assert recall3 == 1.0, recall3

    # metadata filter: only "science" documents, and the right one among them first
    st, body = call(
        "POST",
        "/v1/collections/kb/query",
        principal=me,
        body={
            "query": "Why does the sea level go up and down twice a day?",
            "top_k": 10,
            "filter": {"science": True},
        },
    )
    assert st == 200 and {d["document"] for d in body["data"]} == {
        "tides",
        "photosynthesis",
        "vaccine",
        "rust",
    }
    assert body["data"][0]["document"] == "tides"
    # score threshold: an unrelated question finds nothing above 0.5 cosine
    st, body = call(
        "POST",
        "/v1/collections/kb/query",
        principal=me,
        body={"query": "What is the capital of Mongolia?", "top_k": 5, "score_threshold": 0.5},
    )
    assert st == 200 and body["data"] == []

    # metering: embedding usage as billing's UsageRecorded (this embedder is not a billed task),
    # storage as RagStorageChanged with the vector bytes now stored
    usage = [
        UsageRecorded.model_validate(e.detail)
        for e in events.events
        if e.detail_type == "UsageRecorded" and e.detail["account"] == me.subject
    ]
    assert usage and all(u.kind == "embedding" and u.model == "all-MiniLM-L6-v2" for u in usage)
    assert sum(u.prompt_tokens for u in usage) > 100
    storage = [
        e.detail
        for e in events.events
        if e.detail_type == "RagStorageChanged" and e.detail["account"] == me.subject
    ]
    assert storage[-1]["vectors"] == len(CORPUS) and storage[-1]["vector_bytes"] == len(CORPUS) * 384 * 4


def test_documents_chunked_replaced_and_deleted(service):
    me = wallet()
    assert (
        call(
            "POST",
            "/v1/collections",
            principal=me,
            body={
                "name": "notes",
                "embedding_model": "all-MiniLM-L6-v2",
                "dimension": 384,
                "store": "faiss",
                "chunk_size": 20,
                "chunk_overlap": 5,
            },
        )[0]
        == 201
    )
    long_text = " ".join(
        f"word{i}" for i in range(50)
    )  # 50 words, windows of 20 sharing 5: 0-19, 15-34, 30-49
    st, body = call(
        "POST",
        "/v1/collections/notes/documents",
        principal=me,
        body={
            "documents": [
                {"id": "long", "text": long_text, "metadata": {"kind": "a"}},
                {"id": "short", "text": "a short note about tea", "metadata": {"kind": "b"}},
            ]
        },
    )
    assert st == 200 and body["chunks"] == 4 and body["replaced_chunks"] == 0
    # the same document again (a retried request): replaced, not duplicated
    st, body = call(
        "POST",
        "/v1/collections/notes/documents",
        principal=me,
        body={"documents": [{"id": "long", "text": long_text, "metadata": {"kind": "a"}}]},
    )
    assert st == 200 and body["replaced_chunks"] == 3
    st, rec = call("GET", "/v1/collections/notes", principal=me)
    assert st == 200 and rec["chunks"] == 4 and rec["vector_bytes"] == 4 * 384 * 4
    st, body = call(
        "POST", "/v1/collections/notes/query", principal=me, body={"query": "word16 word17", "top_k": 10}
    )
    chunks = sorted(
        (d["chunk"], d["text"].split()[0], d["text"].split()[-1])
        for d in body["data"]
        if d["document"] == "long"
    )
    assert chunks == [(0, "word0", "word19"), (1, "word15", "word34"), (2, "word30", "word49")]
    st, body = call(
        "POST", "/v1/collections/notes/documents/delete", principal=me, body={"filter": {"kind": "b"}}
    )
    assert st == 200 and body["deleted_chunks"] == 1
    st, body = call("POST", "/v1/collections/notes/documents/delete", principal=me, body={"ids": ["long"]})
    assert st == 200 and body["deleted_chunks"] == 3
    assert call("GET", "/v1/collections/notes", principal=me)[1]["chunks"] == 0


def test_ownership_no_wallet_reads_another_wallets_collection(service):
    alice, mallory = wallet(), wallet()
    assert (
        call(
            "POST",
            "/v1/collections",
            principal=alice,
            body={"name": "private", "embedding_model": "all-MiniLM-L6-v2", "dimension": 384},
        )[0]
        == 201
    )
    assert (
        call(
            "POST",
            "/v1/collections/private/documents",
            principal=alice,
            body={"documents": [{"id": "s", "text": "the vault code is 4711"}]},
        )[0]
        == 200
    )
    for method, path, body in [
        ("GET", "/v1/collections/private", None),
        ("POST", "/v1/collections/private/query", {"query": "vault code"}),
        ("POST", "/v1/collections/private/documents", {"documents": [{"text": "x"}]}),
        ("POST", "/v1/collections/private/documents/delete", {"ids": ["s"]}),
        ("DELETE", "/v1/collections/private", None),
    ]:
        st, err = call(method, path, principal=mallory, body=body)
        assert st == 404 and err["error"]["code"] == "collection_not_found", (method, path, err)
    assert call("GET", "/v1/collections", principal=mallory)[1]["data"] == []
    # mallory's own collection of the same name is a different collection
    assert (
        call(
            "POST",
            "/v1/collections",
            principal=mallory,
            body={"name": "private", "embedding_model": "all-MiniLM-L6-v2", "dimension": 384},
        )[0]
        == 201
    )
    st, body = call("POST", "/v1/collections/private/query", principal=mallory, body={"query": "vault code"})
    assert st == 200 and body["data"] == []
    # alice's is untouched; deleting it and re-creating it starts empty
    st, body = call("POST", "/v1/collections/private/query", principal=alice, body={"query": "vault code"})
    assert [d["document"] for d in body["data"]] == ["s"]
    assert call("DELETE", "/v1/collections/private", principal=alice)[0] == 200
    assert call("GET", "/v1/collections/private", principal=alice)[0] == 404
    assert (
        call(
            "POST",
            "/v1/collections",
            principal=alice,
            body={"name": "private", "embedding_model": "all-MiniLM-L6-v2", "dimension": 384},
        )[0]
        == 201
    )
    assert (
        call("POST", "/v1/collections/private/query", principal=alice, body={"query": "vault code"})[1][
            "data"
        ]
        == []
    )
    # no credentials at all: 401
    assert call("GET", "/v1/collections", principal=None)[0] == 401


@pytest.mark.parametrize(
    "method,path,body,status,code",
    [
        (
            "POST",
            "/v1/collections",
            {"name": "bad name!", "embedding_model": "m", "dimension": 3},
            400,
            "validation_error",
        ),
        (
            "POST",
            "/v1/collections",
            {"name": "x", "embedding_model": "m", "dimension": 0},
            400,
            "validation_error",
        ),
        (
            "POST",
            "/v1/collections",
            {"name": "x", "embedding_model": "m", "dimension": 3, "distance": "manhattan"},
            400,
            "validation_error",
        ),
        (
            "POST",
            "/v1/collections",
            {"name": "x", "embedding_model": "m", "dimension": 3, "chunk_size": 10, "chunk_overlap": 10},
            400,
            "validation_error",
        ),
        (
            "POST",
            "/v1/collections",
            {"name": "x", "embedding_model": "m", "dimension": 3, "surprise": 1},
            400,
            "validation_error",
        ),
        ("POST", "/v1/collections", b"{not json", 400, "invalid_json"),
        ("POST", "/v1/collections/kb/documents", {"documents": []}, 400, "validation_error"),
        ("POST", "/v1/collections/kb/documents", {"documents": [{"text": "   "}]}, 400, "validation_error"),
        (
            "POST",
            "/v1/collections/kb/documents",
            {"documents": [{"text": "a", "metadata": {"k": {"nested": 1}}}]},
            400,
            "validation_error",
        ),
        (
            "POST",
            "/v1/collections/kb/documents",
            {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]},
            400,
            "validation_error",
        ),
        ("POST", "/v1/collections/kb/documents/delete", {}, 400, "validation_error"),
        ("POST", "/v1/collections/kb/query", {"query": "q", "top_k": 0}, 400, "validation_error"),
        ("POST", "/v1/collections/kb/query", {"query": ""}, 400, "validation_error"),
        (
            "POST",
            "/v1/collections/kb/query",
            {"query": "q", "filter": {"bad key": 1}},
            400,
            "validation_error",
        ),
        ("POST", "/v1/collections/missing/query", {"query": "q"}, 404, "collection_not_found"),
    ],
)
def test_bad_input_is_a_clear_4xx(service, method, path, body, status, code):
    me = wallet()
    assert (
        call(
            "POST",
            "/v1/collections",
            principal=me,
            body={"name": "kb", "embedding_model": "all-MiniLM-L6-v2", "dimension": 384},
        )[0]
        == 201
    )
    st, err = call(method, path, principal=me, body=body)
    assert (
        st == status and set(err["error"]) == {"type", "message", "code"} and err["error"]["code"] == code
    ), err


def test_conflicts_and_model_mismatches(service):
    me = wallet()
    spec = {"name": "kb", "embedding_model": "all-MiniLM-L6-v2", "dimension": 384}
    assert call("POST", "/v1/collections", principal=me, body=spec)[0] == 201
    st, err = call("POST", "/v1/collections", principal=me, body=spec)
    assert st == 409 and err["error"]["code"] == "collection_exists"
    # a collection declared with the wrong dimension for its model: 422 on ingestion, nothing stored
    assert (
        call("POST", "/v1/collections", principal=me, body={**spec, "name": "wrong", "dimension": 768})[0]
        == 201
    )
    st, err = call(
        "POST", "/v1/collections/wrong/documents", principal=me, body={"documents": [{"text": "hello"}]}
    )
    assert st == 422 and err["error"]["code"] == "dimension_mismatch"
    assert call("GET", "/v1/collections/wrong", principal=me)[1]["chunks"] == 0
    # a model nobody serves here
    assert (
        call(
            "POST",
            "/v1/collections",
            principal=me,
            body={**spec, "name": "other", "embedding_model": "bge-m3"},
        )[0]
        == 201
    )
    st, err = call("POST", "/v1/collections/other/query", principal=me, body={"query": "hello"})
    assert st == 400 and err["error"]["code"] == "model_not_found"
    # a synchronous upload that would make too many chunks
    huge = [{"id": f"d{i}", "text": " ".join(["w"] * 60)} for i in range(200)]
    st, err = call(
        "POST",
        "/v1/collections/kb/documents",
        principal=me,
        body={"documents": huge, "chunk_size": 20, "chunk_overlap": 0},
    )
    assert st == 413 and err["error"]["code"] == "too_many_chunks"
