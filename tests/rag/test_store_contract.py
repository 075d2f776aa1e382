"""The VectorStore contract: every adapter — Qdrant through qdrant-client's embedded local mode,
Qdrant over REST (``QdrantRestStore`` against the stand-in server, tests/rag/qdrant_standin.py),
Faiss on S3 in the moto server with the numpy flat index and with real faiss — passes the same
tests, checked against a brute-force numpy answer on random vectors."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from ig3.rag.stores import FaissS3Store, Point, SpaceNotFound, matches

pytestmark = pytest.mark.integration
DIM = 16


def brute(vectors, payloads, q, distance, top_k, flt=None):
    v = np.asarray(vectors, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if distance == "cosine":
        s = (v / np.linalg.norm(v, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
        order = np.argsort(-s)
    elif distance == "dot":
        s = v @ q
        order = np.argsort(-s)
    else:
        s = np.linalg.norm(v - q, axis=1)
        order = np.argsort(s)
    keep = [int(i) for i in order if matches(payloads[i], flt)]
    return [(i, float(s[i])) for i in keep[:top_k]]


def corpus(n=60, seed=7):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32).tolist()
    payloads = [
        {"doc": f"d{i // 3}", "m": {"lang": ["en", "de", "fr"][i % 3], "year": 2000 + i % 5}}
        for i in range(n)
    ]
    return vectors, payloads


@pytest.mark.parametrize("distance", ["cosine", "dot", "euclid"])
def test_query_matches_brute_force(store, distance):
    space = "s" + uuid.uuid4().hex
    store.create(space, DIM, distance)
    vectors, payloads = corpus()
    store.upsert(space, [Point(f"p{i}", v, p) for i, (v, p) in enumerate(zip(vectors, payloads))])
    assert store.count(space) == len(vectors)
    rng = np.random.default_rng(1)
    for _ in range(5):
        q = rng.normal(size=DIM).astype(np.float32).tolist()
        want = brute(vectors, payloads, q, distance, 7)
        got = store.query(space, q, top_k=7)
        assert [h.id for h in got] == [f"p{i}" for i, _ in want]
        assert [h.score for h in got] == pytest.approx([s for _, s in want], rel=1e-4, abs=1e-4)
        assert got[0].payload == payloads[want[0][0]]
        # threshold between the 4th and 5th results: exactly the first four pass
        thr = (want[3][1] + want[4][1]) / 2
        thr_hits = store.query(space, q, top_k=7, score_threshold=thr)
        assert [h.id for h in thr_hits] == [h.id for h in got[:4]]
        # metadata filter (AND across keys, OR within one)
        flt = {"m.lang": ["de", "fr"], "m.year": [2001, 2003]}
        want_f = brute(vectors, payloads, q, distance, 5, flt)
        got_f = store.query(space, q, top_k=5, filter=flt)
        assert [h.id for h in got_f] == [f"p{i}" for i, _ in want_f]
        assert all(
            h.payload["m"]["lang"] in ("de", "fr") and h.payload["m"]["year"] in (2001, 2003) for h in got_f
        )
    store.drop(space)


def test_upsert_replaces_and_delete_counts(store):
    space = "s" + uuid.uuid4().hex
    store.create(space, DIM, "cosine")
    vectors, payloads = corpus(30)
    store.upsert(space, [Point(f"p{i}", v, p) for i, (v, p) in enumerate(zip(vectors, payloads))])
    # same id, new vector + payload: replaced, not duplicated
    new = np.ones(DIM, dtype=np.float32).tolist()
    store.upsert(space, [Point("p0", new, {"doc": "dX", "m": {"lang": "xx"}})])
    assert store.count(space) == 30
    top = store.query(space, new, top_k=1)[0]
    assert top.id == "p0" and top.payload["doc"] == "dX" and top.score == pytest.approx(1.0, abs=1e-5)
    assert store.delete(space, ids=["p1", "p2", "nope"]) == 2
    # counting by filter (ingestion jobs measure what a batch replaces before writing)
    assert store.count(space, filter={"doc": ["d3", "dX"]}) == 4
    assert store.count(space, filter={"doc": ["no"]}) == 0
    assert store.delete(space, filter={"doc": ["d3"]}) == 3  # p9, p10, p11
    assert store.delete(space, filter={"m.lang": ["xx"]}) == 1
    assert store.delete(space, filter={"doc": ["nothing"]}) == 0
    assert store.count(space) == 30 - 6
    ids = {h.id for h in store.query(space, new, top_k=100)}
    assert not ids & {"p0", "p1", "p2", "p9", "p10", "p11"} and len(ids) == 24
    store.drop(space)
    with pytest.raises(SpaceNotFound):
        store.query(space, new, top_k=1)


def test_bool_and_int_filters_stay_apart(store):
    space = "s" + uuid.uuid4().hex
    store.create(space, 4, "dot")
    store.upsert(
        space, [Point("a", [1, 0, 0, 0], {"m": {"f": True}}), Point("b", [0, 1, 0, 0], {"m": {"f": 1}})]
    )
    assert [h.id for h in store.query(space, [1, 1, 0, 0], top_k=5, filter={"m.f": [True]})] == ["a"]
    assert [h.id for h in store.query(space, [1, 1, 0, 0], top_k=5, filter={"m.f": [1]})] == ["b"]


@pytest.mark.parametrize("engine", ["numpy", "faiss"])
def test_faiss_index_persists_in_s3_and_concurrent_writers_both_land(rag_bucket, engine):
    s3, bucket = rag_bucket
    prefix = f"p{uuid.uuid4().hex[:6]}/"
    a = FaissS3Store(bucket, client=s3, prefix=prefix, engine=engine)
    b = FaissS3Store(bucket, client=s3, prefix=prefix, engine=engine)  # another Lambda container
    space = "s" + uuid.uuid4().hex
    a.create(space, DIM, "cosine")
    vectors, payloads = corpus(20)
    a.upsert(space, [Point(f"p{i}", v, p) for i, (v, p) in enumerate(zip(vectors[:10], payloads))])
    assert b.count(space) == 10  # b loads the object a wrote
    # b's cached copy is now stale: a writes more, then b writes; b must not drop a's points
    a.upsert(space, [Point(f"p{i}", vectors[i], payloads[i]) for i in range(10, 15)])
    b.upsert(space, [Point(f"p{i}", vectors[i], payloads[i]) for i in range(15, 20)])
    fresh = FaissS3Store(bucket, client=s3, prefix=prefix, engine=engine)
    assert fresh.count(space) == 20
    q = vectors[17]
    assert fresh.query(space, q, top_k=1)[0].id == "p17"
    # a warm reader revalidates with a conditional GET and sees b's write
    assert a.query(space, vectors[19], top_k=1)[0].id == "p19"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    assert keys == [f"{prefix}{space}.faiss"]


@pytest.mark.parametrize("engine", ["numpy", "faiss"])
def test_faiss_revalidation_interval_bounds_staleness(rag_bucket, engine):
    s3, bucket = rag_bucket
    prefix = f"r{uuid.uuid4().hex[:6]}/"
    writer = FaissS3Store(bucket, client=s3, prefix=prefix, engine=engine)
    lazy = FaissS3Store(bucket, client=s3, prefix=prefix, revalidate_s=3600, engine=engine)
    # revalidate_s=0: every read checks S3
    eager = FaissS3Store(bucket, client=s3, prefix=prefix, engine=engine)
    space = "s" + uuid.uuid4().hex
    writer.create(space, 4, "dot")
    writer.upsert(space, [Point("a", [1, 0, 0, 0])])
    assert lazy.count(space) == eager.count(space) == 1
    writer.upsert(space, [Point("b", [0, 1, 0, 0])])
    assert eager.count(space) == 2
    assert lazy.count(space) == 1  # within its interval it answers from the cached index
    lazy.revalidate_s = 0
    assert lazy.count(space) == 2
