"""``QdrantRestStore``: Qdrant's REST API with the standard library, as the functions run it.

Tested against a **stand-in** server (tests/rag/qdrant_standin.py), not Qdrant: there is no
Qdrant server binary on PyPI and no Docker here. The stand-in parses every request with
qdrant-client's OpenAPI-generated models (Qdrant's REST schema: what they reject is answered
400), executes it on qdrant-client's embedded local mode and answers in Qdrant's envelope. The
VectorStore contract itself runs against this adapter in test_store_contract.py; here: the
transport (API key, keep-alive and the one reconnect, refused connections, timeouts), clear
errors, and that the REST adapter and qdrant-client's ``QdrantStore`` share collections.
"""

from __future__ import annotations

import socket
import threading
import uuid

import pytest

from ig3.rag.stores import Point, QdrantError, QdrantRestStore, QdrantStore, SpaceNotFound

pytestmark = pytest.mark.integration


def _space() -> str:
    return "s" + uuid.uuid4().hex


def test_api_key_is_sent_and_a_wrong_one_is_a_clear_error(qdrant_standin):
    space = _space()
    QdrantRestStore(qdrant_standin.url, api_key="standin-key").create(space, 4, "dot")
    for key in (None, "wrong"):
        with pytest.raises(QdrantError) as err:
            QdrantRestStore(qdrant_standin.url, api_key=key).count(space)
        assert err.value.status == 401 and "API key" in str(err.value)


def test_one_kept_alive_connection_and_one_reconnect(qdrant_standin):
    store = QdrantRestStore(qdrant_standin.url, api_key="standin-key")
    space = _space()
    before = qdrant_standin.connections
    store.create(space, 4, "cosine")
    store.upsert(space, [Point("a", [1, 0, 0, 0]), Point("b", [0, 1, 0, 0])])
    assert store.count(space) == 2 and store.query(space, [1, 0, 0, 0], top_k=1)[0].id == "a"
    assert qdrant_standin.connections == before + 1  # all of that on one connection
    qdrant_standin.drop_after_response = True  # the server closes it after the next answer, silently
    assert store.count(space) == 2
    assert store.count(space) == 2  # the reused connection fails: retried once on a new one
    assert qdrant_standin.connections == before + 2
    # another thread gets its own connection
    out = []
    t = threading.Thread(target=lambda: out.append(store.count(space)))
    t.start()
    t.join()
    assert out == [2] and qdrant_standin.connections == before + 3


def test_missing_collection_is_space_not_found_everywhere(qdrant_standin):
    store = QdrantRestStore(qdrant_standin.url, api_key="standin-key")
    space = _space()
    for call in (
        lambda: store.query(space, [1, 0], top_k=1),
        lambda: store.count(space),
        lambda: store.count(space, filter={"a": [1]}),
        lambda: store.upsert(space, [Point("a", [1, 0])]),
        lambda: store.upsert(space, []),
        lambda: store.delete(space, ids=["a"]),
        lambda: store.delete(space),
    ):
        with pytest.raises(SpaceNotFound):
            call()
    store.drop(space)  # dropping what is not there is not an error
    store.create(space, 2, "dot")
    store.create(space, 2, "dot")  # nor is creating what is


def test_rejected_requests_are_clear_errors(qdrant_standin):
    store = QdrantRestStore(qdrant_standin.url, api_key="standin-key")
    space = _space()
    store.create(space, 4, "euclid")
    with pytest.raises(QdrantError) as err:
        store.upsert(space, [Point("a", [1.0, 2.0])])
    assert err.value.status == 400 and "dimension" in err.value.message
    # the schema check is the models': a filter value type Qdrant's schema does not allow
    with pytest.raises(QdrantError) as err:
        store.count(space, filter={"x": [1.5]})
    assert err.value.status == 400 and "Format error" in err.value.message


def test_refused_and_timed_out_connections_raise_qdrant_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(QdrantError) as err:
        QdrantRestStore(f"http://127.0.0.1:{port}").count("x")
    assert err.value.status == 0 and "ConnectionRefused" in str(err.value)
    # a server that accepts and never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        store = QdrantRestStore(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.3)
        with pytest.raises(QdrantError) as err:
            store.count("x")
        assert err.value.status == 0 and "timed out" in str(err.value).lower()
    with pytest.raises(ValueError):
        QdrantRestStore("qdrant:6333")


def test_rest_and_qdrant_client_share_collections(qdrant_standin):
    """Points written through qdrant-client are read over REST and the other way round (the same
    UUIDv5 point ids, our id in ``_pid``): switching the functions to REST keeps their data."""
    space = _space()
    client_side = QdrantStore(client=qdrant_standin.local)
    rest = QdrantRestStore(qdrant_standin.url, api_key="standin-key")
    with qdrant_standin.lock:
        client_side.create(space, 4, "dot")
        client_side.upsert(space, [Point("from-client", [1, 0, 0, 0], {"doc": "c"})])
    rest.upsert(space, [Point("from-rest", [0, 1, 0, 0], {"doc": "r"})])
    hits = rest.query(space, [1, 0.5, 0, 0], top_k=5)
    assert [(h.id, h.payload) for h in hits] == [("from-client", {"doc": "c"}), ("from-rest", {"doc": "r"})]
    with qdrant_standin.lock:
        assert [h.id for h in client_side.query(space, [0, 1, 0, 0], top_k=1)] == ["from-rest"]
        assert client_side.delete(space, ids=["from-rest"]) == 1
    assert rest.count(space) == 1


def test_wiring_picks_rest_for_a_url_and_local_mode_for_a_path(monkeypatch, tmp_path):
    from ig3.rag import wiring

    monkeypatch.delenv("IG3_RAG_BUCKET", raising=False)
    monkeypatch.setattr(wiring, "rag_bucket", lambda: None)
    monkeypatch.setenv("IG3_QDRANT_URL", "https://qdrant.example:6333")
    monkeypatch.setenv("IG3_QDRANT_API_KEY", "k")
    store = wiring.stores_from_env()["qdrant"]
    assert isinstance(store, QdrantRestStore) and store._headers["api-key"] == "k"
    monkeypatch.delenv("IG3_QDRANT_URL")
    monkeypatch.setenv("IG3_QDRANT_PATH", ":memory:")
    assert isinstance(wiring.stores_from_env()["qdrant"], QdrantStore)
    QdrantStore._LOCAL_CLIENTS.pop(":memory:").close()
