"""The ``VectorStore`` port and its adapters, which pass the same contract tests.

Choosing per collection (the trade-off):
- **Qdrant** (the default where configured): a server (URL + API key in production; the
  client's embedded local mode in the local cloud). Incremental upserts and deletes,
  payload-filtered HNSW search, scales to millions of vectors, concurrent writers. Costs a
  running service. Two adapters of the same collections: ``QdrantRestStore`` (Qdrant's HTTP API
  with the standard library: what the Lambda functions run) and ``QdrantStore`` (qdrant-client:
  its embedded local mode for the local cloud and the tests; not in any Lambda package, since it
  imports grpcio and numpy eagerly even for REST — issue #9).
- **Faiss**: an exact flat index persisted as one S3 object and loaded by the function (cached
  by ETag between invocations). No server at all and exact results, but every write rewrites
  the object (optimistic concurrency with S3 conditional writes) and the whole index is loaded
  into memory: for small, read-mostly collections (up to ~100k vectors of 384 floats = 150 MB).
  The object holds the index in faiss's own serialization; the functions search it with numpy
  (``FlatIndex``, the same answers) and faiss itself stays in the dev/test environment as the
  oracle (``FaissS3Store(engine="faiss")``).

Semantics both honour (the contract):
- ``distance``: ``cosine`` (score = cosine similarity, higher is better), ``dot`` (score = dot
  product, higher is better), ``euclid`` (score = L2 distance, lower is better).
- ``score_threshold``: results at least that good (>= for cosine/dot, <= for euclid).
- ``filter``: ``{payload key path: [values]}``; a point matches when, for every key, its
  value equals one of the values (AND across keys, OR within one key). Paths are dotted
  (``m.lang``) into nested payload objects.
- ``upsert`` of an existing id replaces that point.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

Distance = Literal["cosine", "dot", "euclid"]
Scalar = str | int | float | bool
Filter = dict[str, list[Scalar]]
DISTANCES: tuple[str, ...] = ("cosine", "dot", "euclid")


@dataclass(frozen=True)
class Point:
    id: str
    vector: list[float]
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


class VectorStore(Protocol):
    def create(self, space: str, dimension: int, distance: Distance) -> None: ...
    def drop(self, space: str) -> None: ...
    def upsert(self, space: str, points: list[Point]) -> None: ...
    def delete(self, space: str, *, ids: list[str] | None = None, filter: Filter | None = None) -> int: ...
    def query(
        self,
        space: str,
        vector: list[float],
        *,
        top_k: int,
        score_threshold: float | None = None,
        filter: Filter | None = None,
    ) -> list[Hit]: ...
    def count(self, space: str, *, filter: Filter | None = None) -> int: ...


class SpaceNotFound(LookupError):
    pass


def _lookup(payload: dict[str, Any], path: str) -> Any:
    cur: Any = payload
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


_MISSING = object()


def matches(payload: dict[str, Any], flt: Filter | None) -> bool:
    """The contract's filter semantics, for stores that filter in Python (and for tests)."""
    if not flt:
        return True
    for path, values in flt.items():
        v = _lookup(payload, path)
        # bool is an int in Python: keep True from matching 1 (Qdrant keeps them apart too).
        if v is _MISSING or not any(type(v) is type(w) and v == w for w in values):
            return False
    return True


# ------------------------------------------------------------------------------------ Qdrant
class QdrantStore:
    """Qdrant through ``qdrant-client``: ``path`` (embedded local mode: the local cloud, tests) or
    ``url`` + ``api_key`` (a server; the functions use ``QdrantRestStore`` for that instead, which
    needs no qdrant-client — both read and write the same points).

    Point ids: Qdrant takes unsigned ints or UUIDs, so a point's id is the UUIDv5 of our string
    id, which rides in the payload (``_pid``) to be returned. Local mode holds a file lock on its
    path: one client per path per process (``_LOCAL_CLIENTS``). On disk, local mode commits
    SQLite once per point (~20 ms each on this machine's disk, bench/bench_rag.py): fine for a
    developer's collections; ``path=":memory:"`` keeps nothing and ingests ~1000x faster.
    """

    _LOCAL_CLIENTS: dict[str, Any] = {}
    _LOCK = threading.Lock()

    def __init__(
        self,
        *,
        url: str | None = None,
        api_key: str | None = None,
        path: str | None = None,
        client: Any | None = None,
        timeout_s: int = 10,
    ):
        if client is not None:
            self._client = client
        elif path is not None:
            with self._LOCK:
                if path not in self._LOCAL_CLIENTS:
                    from qdrant_client import QdrantClient

                    self._LOCAL_CLIENTS[path] = (
                        QdrantClient(location=":memory:") if path == ":memory:" else QdrantClient(path=path)
                    )
                self._client = self._LOCAL_CLIENTS[path]
        elif url is not None:
            from qdrant_client import QdrantClient

            self._client = QdrantClient(url=url, api_key=api_key, timeout=timeout_s)
        else:
            raise ValueError("QdrantStore needs url, path or client")

    @staticmethod
    def _pid(point_id: str) -> str:
        return _qdrant_id(point_id)

    @staticmethod
    def _filter(flt: Filter | None, ids: list[str] | None = None) -> Any:
        from qdrant_client import models as qm

        must: list[Any] = []
        for path, values in (flt or {}).items():
            if len(values) == 1:
                must.append(qm.FieldCondition(key=path, match=qm.MatchValue(value=values[0])))
            else:
                must.append(qm.FieldCondition(key=path, match=qm.MatchAny(any=list(values))))
        if ids is not None:
            must.append(qm.HasIdCondition(has_id=[QdrantStore._pid(i) for i in ids]))
        return qm.Filter(must=must) if must else None

    def create(self, space: str, dimension: int, distance: Distance) -> None:
        from qdrant_client import models as qm

        dist = {"cosine": qm.Distance.COSINE, "dot": qm.Distance.DOT, "euclid": qm.Distance.EUCLID}[distance]
        if not self._client.collection_exists(space):
            self._client.create_collection(
                space, vectors_config=qm.VectorParams(size=dimension, distance=dist)
            )

    def drop(self, space: str) -> None:
        if self._client.collection_exists(space):
            self._client.delete_collection(space)

    def _require(self, space: str) -> None:
        if not self._client.collection_exists(space):
            raise SpaceNotFound(space)

    def upsert(self, space: str, points: list[Point]) -> None:
        from qdrant_client import models as qm

        self._require(space)
        for i in range(0, len(points), 256):
            batch = [
                qm.PointStruct(id=self._pid(p.id), vector=list(p.vector), payload={**p.payload, "_pid": p.id})
                for p in points[i : i + 256]
            ]
            self._client.upsert(space, points=batch, wait=True)

    def delete(self, space: str, *, ids: list[str] | None = None, filter: Filter | None = None) -> int:
        from qdrant_client import models as qm

        self._require(space)
        cond = self._filter(filter, ids)
        if cond is None:
            return 0
        n = self._client.count(space, count_filter=cond, exact=True).count
        if n:
            self._client.delete(space, points_selector=qm.FilterSelector(filter=cond), wait=True)
        return n

    def query(
        self,
        space: str,
        vector: list[float],
        *,
        top_k: int,
        score_threshold: float | None = None,
        filter: Filter | None = None,
    ) -> list[Hit]:
        self._require(space)
        res = self._client.query_points(
            space,
            query=list(vector),
            limit=top_k,
            score_threshold=score_threshold,
            query_filter=self._filter(filter),
            with_payload=True,
        )
        out = []
        for p in res.points:
            payload = dict(p.payload or {})
            pid = payload.pop("_pid", str(p.id))
            out.append(Hit(pid, float(p.score), payload))
        return out

    def count(self, space: str, *, filter: Filter | None = None) -> int:
        self._require(space)
        return self._client.count(space, count_filter=self._filter(filter), exact=True).count


# ------------------------------------------------------------------------------- Qdrant (REST)
class QdrantError(RuntimeError):
    """Qdrant answered with an error, or could not be reached (``status`` 0)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"Qdrant: HTTP {status}: {message}" if status else f"Qdrant: {message}")
        self.status, self.message = status, message


_QDRANT_DISTANCES = {"cosine": "Cosine", "dot": "Dot", "euclid": "Euclid"}
MAX_QDRANT_RESPONSE_BYTES = 64 * 1024 * 1024


def _qdrant_id(point_id: str) -> str:
    """Qdrant takes unsigned ints or UUIDs: a point's id is the UUIDv5 of our string id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "ig3:" + point_id))


def _qdrant_filter(flt: Filter | None, ids: list[str] | None = None) -> dict[str, Any] | None:
    """The contract's filter as Qdrant's JSON ``Filter`` (what ``QdrantStore._filter`` builds with models)."""
    must: list[dict[str, Any]] = []
    for path, values in (flt or {}).items():
        if len(values) == 1:
            must.append({"key": path, "match": {"value": values[0]}})
        else:
            must.append({"key": path, "match": {"any": list(values)}})
    if ids is not None:
        must.append({"has_id": [_qdrant_id(i) for i in ids]})
    return {"must": must} if must else None


class QdrantRestStore:
    """Qdrant's HTTP API with the standard library: the adapter the Lambda functions use.

    Same collections and points as ``QdrantStore`` (the same UUIDv5 point ids, our id in the
    payload's ``_pid``), so either reads what the other wrote. Without qdrant-client, which imports
    grpcio and numpy eagerly even in REST mode (~20 MB of the rag package, issue #9).

    - One kept-alive ``http.client`` connection per thread; a request that fails on a reused
      connection (the server closed it while idle) is retried once on a new one — every request
      here is idempotent (upserts by id, deletes by filter, reads).
    - ``api_key``: sent as Qdrant's ``api-key`` header. ``timeout_s``: connect and each read.
    - Errors: a missing collection raises ``SpaceNotFound``; any other answer that is not 2xx,
      a transport failure (refused, timeout, TLS) or a body that is not Qdrant's envelope raises
      ``QdrantError`` with the status and Qdrant's message.
    """

    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = 10.0, batch: int = 256):
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Qdrant URL must be http(s)://host[:port][/prefix], not {url!r}")
        self.url, self.timeout_s, self.batch = url, timeout_s, batch
        self._https = parts.scheme == "https"
        # without a port, 6333 for http and https alike, as qdrant-client does (Qdrant Cloud serves there)
        self._host, self._port = parts.hostname, parts.port or 6333
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["api-key"] = api_key
        from ig3.keepalive_http import KeepAliveHttp

        self._http = KeepAliveHttp(self._host, self._port, https=self._https, timeout_s=timeout_s,
                                   max_bytes=MAX_QDRANT_RESPONSE_BYTES)

    # -- transport ---------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        from ig3.keepalive_http import TransportError

        try:
            return self._http.send(method, self._prefix + path, body, self._headers)
        except TransportError as exc:
            raise QdrantError(0, str(exc)) from exc

    def _call(self, method: str, path: str, body: Any = None, *, space: str | None = None) -> Any:
        """``result`` of Qdrant's envelope; a missing collection (404 on ``space``) is ``SpaceNotFound``."""
        status, raw = self._send(method, path, None if body is None else orjson.dumps(body))
        try:
            reply = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            reply = None
        if 200 <= status < 300:
            if not isinstance(reply, dict) or "result" not in reply:
                raise QdrantError(status, "the answer is not Qdrant's {result, status, time} envelope")
            return reply["result"]
        message = raw.decode("utf-8", "replace")[:500].strip() or "(no body)"
        if isinstance(reply, dict) and isinstance(reply.get("status"), dict):
            message = str(reply["status"].get("error", message))
        if status == 404 and space is not None and "ollection" in message:
            raise SpaceNotFound(space)
        raise QdrantError(status, message)

    @staticmethod
    def _path(space: str, tail: str = "") -> str:
        from urllib.parse import quote

        return f"/collections/{quote(space, safe='')}{tail}"

    # -- the port ----------------------------------------------------------------------------------
    def exists(self, space: str) -> bool:
        return bool(self._call("GET", self._path(space, "/exists"))["exists"])

    def _require(self, space: str) -> None:
        if not self.exists(space):
            raise SpaceNotFound(space)

    def create(self, space: str, dimension: int, distance: Distance) -> None:
        if self.exists(space):
            return
        body = {"vectors": {"size": int(dimension), "distance": _QDRANT_DISTANCES[distance]}}
        try:
            self._call("PUT", self._path(space), body)
        except QdrantError as exc:
            if exc.status not in (400, 409) or "already exists" not in exc.message:
                raise  # a concurrent creator got there first: what was asked exists

    def drop(self, space: str) -> None:
        if self.exists(space):
            try:
                self._call("DELETE", self._path(space), space=space)
            except SpaceNotFound:
                pass  # dropped concurrently

    def upsert(self, space: str, points: list[Point]) -> None:
        if not points:
            self._require(space)
            return
        for i in range(0, len(points), self.batch):
            batch = [
                {"id": _qdrant_id(p.id), "vector": [float(x) for x in p.vector],
                 "payload": {**p.payload, "_pid": p.id}}
                for p in points[i : i + self.batch]
            ]
            self._call("PUT", self._path(space, "/points?wait=true"), {"points": batch}, space=space)

    def delete(self, space: str, *, ids: list[str] | None = None, filter: Filter | None = None) -> int:
        cond = _qdrant_filter(filter, ids)
        if cond is None:
            self._require(space)
            return 0
        n = self._count(space, cond)
        if n:
            self._call("POST", self._path(space, "/points/delete?wait=true"), {"filter": cond}, space=space)
        return n

    def query(
        self,
        space: str,
        vector: list[float],
        *,
        top_k: int,
        score_threshold: float | None = None,
        filter: Filter | None = None,
    ) -> list[Hit]:
        body: dict[str, Any] = {"query": [float(x) for x in vector], "limit": int(top_k),
                                "with_payload": True}
        cond = _qdrant_filter(filter)
        if cond is not None:
            body["filter"] = cond
        if score_threshold is not None:
            body["score_threshold"] = float(score_threshold)
        result = self._call("POST", self._path(space, "/points/query"), body, space=space)
        out = []
        for p in result["points"]:
            payload = dict(p.get("payload") or {})
            pid = payload.pop("_pid", str(p["id"]))
            out.append(Hit(pid, float(p["score"]), payload))
        return out

    def _count(self, space: str, cond: dict[str, Any] | None) -> int:
        body: dict[str, Any] = {"exact": True}
        if cond is not None:
            body["filter"] = cond
        return int(self._call("POST", self._path(space, "/points/count"), body, space=space)["count"])

    def count(self, space: str, *, filter: Filter | None = None) -> int:
        return self._count(space, _qdrant_filter(filter))


# ------------------------------------------------------------------------------------- Faiss
_MAGIC = b"IG3FAISS1"
_FAISS: Any = None


def _faiss() -> Any:
    """faiss, imported on first use, on ONE OpenMP thread: a single query over a small flat index
    takes ~0.5 ms on one thread and ~31 ms on two busy cores (OpenMP workers spin-wait for each
    other; measured here), and a function answers one query at a time."""
    global _FAISS
    if _FAISS is None:
        import faiss

        faiss.omp_set_num_threads(1)
        _FAISS = faiss
    return _FAISS


# ------------------------------------------------------------------------ exact flat indexes
# Faiss's serialization of IndexIDMap2 over IndexFlatIP / IndexFlatL2 (faiss/impl/index_write.cpp),
# little-endian: fourcc "IxM2", the index header, the flat sub-index ("IxFI" inner product, "IxF2"
# L2: the same header, then the float count as uint64 and the float32 vectors row by row), then the
# id map (uint64 count, int64 ids, one per row in storage order). The header: d int32, ntotal int64,
# two int64 placeholders (1 << 20), is_trained uint8, metric_type int32 (0 inner product, 1 L2).
_IDMAP2, _FLAT_IP, _FLAT_L2 = b"IxM2", b"IxFI", b"IxF2"
_METRIC_IP, _METRIC_L2 = 0, 1
_HEADER = struct.Struct("<iqqqBi")
_SCORE_BLOCK = 8192  # rows per float64 block: 8192 x 384 dimensions = 25 MB
_RESERVOIR_K = 100  # faiss.cvar.distance_compute_min_k_reservoir: k-heap below it, reservoir from it


def _index_header(d: int, ntotal: int, metric: int) -> bytes:
    return _HEADER.pack(d, ntotal, 1 << 20, 1 << 20, 1, metric)


class FlatIndex:
    """An exact flat index in numpy: what ``faiss.IndexIDMap2(faiss.IndexFlatIP|IndexFlatL2)`` does
    for this store, without faiss (14 MB) in the Lambda package, reading and writing faiss's own
    serialization (so objects written by either implementation load in the other).

    Same answers as faiss's: scores are inner products (``ip``) or squared L2 distances (``l2``),
    best first; equal scores in faiss's order (the later row first for inner products, the earlier
    for L2 — its heaps compare (score, row) pairs; removal compacts rows in order, as here), and
    which of several equal scores at the k-th place make the cut as faiss decides it (``_tied``) —
    except for inner products with k >= 100, where faiss's reservoir picks them by its
    partitioning (same scores, possibly other ids of those tied points). Scores may differ from
    faiss's SIMD kernels in the last float32 bits (tests/rag/test_flat_index.py compares both).
    """

    def __init__(self, dimension: int, metric: Literal["ip", "l2"], vectors: Any = None, ids: Any = None):
        import numpy as np

        if metric not in ("ip", "l2"):
            raise ValueError(f"unknown metric {metric!r}")
        self.dimension, self.metric = int(dimension), metric
        self.vectors = (np.zeros((0, self.dimension), dtype=np.float32) if vectors is None
                        else np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dimension))
        self.ids = np.zeros(0, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64).copy()
        self._norms: Any = None  # squared row norms (float64), for the screening pass of search
        if len(self.ids) != len(self.vectors):
            raise ValueError("one id per vector")

    @property
    def ntotal(self) -> int:
        return len(self.ids)

    def add_with_ids(self, x: Any, ids: Any) -> None:
        import numpy as np

        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, self.dimension)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(x) != len(ids):
            raise ValueError("one id per vector")
        self.vectors = np.concatenate([self.vectors, x])
        self.ids = np.concatenate([self.ids, ids])
        self._norms = None

    def remove_ids(self, ids: Any) -> int:
        import numpy as np

        keep = ~np.isin(self.ids, np.asarray(ids, dtype=np.int64))
        removed = int(len(keep) - keep.sum())
        if removed:
            self.vectors, self.ids = self.vectors[keep], self.ids[keep]
            self._norms = None
        return removed

    def search(self, query: Any, k: int, allowed: Any = None) -> list[tuple[float, int]]:
        """The ``k`` best (score, id) of one query vector, among ``allowed`` ids when given."""
        import numpy as np

        q = np.asarray(query, dtype=np.float32).reshape(self.dimension)
        rows = np.arange(len(self.ids))
        if allowed is not None:
            rows = rows[np.isin(self.ids, np.asarray(allowed, dtype=np.int64))]
        if k <= 0 or len(rows) == 0:
            return []
        scores = self._scores(q, rows, k)
        key = -scores if self.metric == "ip" else scores  # lower is better; +inf: out of the running
        if k < len(rows):
            kth = np.partition(key, k - 1)[k - 1]
            better = np.flatnonzero(key < kth)
            ties = np.flatnonzero(key == kth)
            chosen = np.concatenate([better, self._tied(key, kth, ties, k - len(better), k)])
        else:
            chosen = np.arange(len(rows))
        # the order of faiss's heaps, which compare (score, row): equal scores the later row first
        # for inner products, the earlier row first for L2 distances
        tie = -chosen if self.metric == "ip" else chosen
        order = chosen[np.lexsort((tie, key[chosen]))]
        return [(float(scores[i]), int(self.ids[rows[i]])) for i in order]

    def _sqnorms(self) -> Any:
        """Squared norms of the rows (float64), computed once per index state."""
        import numpy as np

        if self._norms is None or len(self._norms) != len(self.ids):
            out = np.empty(len(self.ids), dtype=np.float64)
            for start in range(0, len(self.ids), _SCORE_BLOCK):
                x = self.vectors[start : start + _SCORE_BLOCK].astype(np.float64)
                out[start : start + len(x)] = np.einsum("ij,ij->i", x, x)
            self._norms = out
        return self._norms

    def _scores(self, q: Any, rows: Any, k: int) -> Any:
        """float32 scores of ``rows`` that are exact for every row that can be among the best ``k``
        (computed in float64, rounded once); the others are +inf / -inf (out of the running).

        A float32 BLAS pass screens: its error on a dot product of length d is at most
        d * 2**-24 * |x| |q| (``bound``, doubled for safety), so any row whose exact score can reach
        the k-th place lies within twice that of the screened k-th score. Only those are recomputed
        exactly. Not float32 scores throughout: BLAS kernels sum rows in different orders by their
        position, so two identical vectors get scores an ulp apart there, while faiss gives them the
        same score — and the order of equal scores is part of faiss's answer (``_tied``).
        """
        import numpy as np

        x = self.vectors if len(rows) == len(self.ids) else self.vectors[rows]
        norms2 = self._sqnorms() if len(rows) == len(self.ids) else self._sqnorms()[rows]
        q64 = q.astype(np.float64)
        qn = float(np.sqrt(q64 @ q64))
        ip32 = (x @ q).astype(np.float64)
        bound = 2.0 * self.dimension * 2.0**-24 * float(np.sqrt(norms2.max(initial=0.0))) * qn
        if self.metric == "ip":
            key = -ip32
        else:  # |x - q|^2 = |x|^2 - 2 x.q + |q|^2: only x.q carries float32 error
            key = norms2 - 2.0 * ip32 + qn * qn
            bound *= 2.0
        bound += 1e-30
        kk = min(k, len(rows))
        kth = np.partition(key, kk - 1)[kk - 1]
        cand = np.flatnonzero(key <= kth + 2.0 * bound)
        out = np.full(len(rows), -np.inf if self.metric == "ip" else np.inf, dtype=np.float32)
        for start in range(0, len(cand), _SCORE_BLOCK):
            idx = cand[start : start + _SCORE_BLOCK]
            xc = x[idx].astype(np.float64)
            if self.metric == "ip":
                out[idx] = xc @ q64
            else:
                xc -= q64
                out[idx] = np.einsum("ij,ij->i", xc, xc)
        return out

    def _tied(self, key: Any, kth: Any, ties: Any, slots: int, k: int) -> Any:
        """Which of the points scoring exactly the k-th score faiss returns when there are more of
        them than places left (``slots``): duplicated vectors at the cut-off. ``key``: the scan in
        row order, lower is better.

        Below ``faiss.cvar.distance_compute_min_k_reservoir`` (100) faiss keeps a k-heap, initially
        of k placeholders worse than anything, and replaces its top only with a strictly better
        score; its top among equal scores is the earlier row for inner products, the later for L2.
        So: the first k points at least as good as the k-th score enter (each displacing a
        placeholder or a worse point); later ties cannot; each later strictly better point then
        displaces one tie from the heap's top. From 100 on, faiss's reservoir keeps, among equal
        scores, the first rows it scanned.
        """
        import numpy as np

        if len(ties) <= slots:
            return ties
        if k >= _RESERVOIR_K:
            return ties[:slots]
        events = np.flatnonzero(key <= kth)[:k]  # rows in scan order that enter the heap
        entered = events[key[events] == kth]  # the ties among them
        # strictly better points scanned after the heap held no worse point: each displaces a tie
        displaced = int((key < kth).sum()) - (len(events) - len(entered))
        kept = entered[displaced:] if self.metric == "ip" else entered[: len(entered) - displaced]
        if len(kept) != slots:  # cannot happen: the heap ends with exactly k points
            raise AssertionError("flat index tie selection")
        return kept

    def serialize(self) -> bytes:
        metric = _METRIC_IP if self.metric == "ip" else _METRIC_L2
        n = self.ntotal
        return b"".join((
            _IDMAP2, _index_header(self.dimension, n, metric),
            _FLAT_IP if self.metric == "ip" else _FLAT_L2, _index_header(self.dimension, n, metric),
            struct.pack("<Q", n * self.dimension), self.vectors.astype("<f4", copy=False).tobytes(),
            struct.pack("<Q", n), self.ids.astype("<i8", copy=False).tobytes(),
        ))

    @classmethod
    def deserialize(cls, raw: bytes | memoryview) -> FlatIndex:
        import numpy as np

        buf = memoryview(raw)
        pos = 0

        def take(n: int) -> memoryview:
            nonlocal pos
            if pos + n > len(buf):
                raise ValueError("truncated faiss index")
            out = buf[pos : pos + n]
            pos += n
            return out

        def header(fourccs: tuple[bytes, ...]) -> tuple[bytes, int, int, int]:
            fourcc = bytes(take(4))
            if fourcc not in fourccs:
                raise ValueError(f"unsupported faiss index type {fourcc!r} (this store writes "
                                 "IndexIDMap2 over IndexFlatIP / IndexFlatL2)")
            d, ntotal, _, _, _, metric = _HEADER.unpack(take(_HEADER.size))
            if metric > 1:
                take(4)  # metric_arg (float), written for metrics other than IP / L2
            return fourcc, d, ntotal, metric

        _, d, ntotal, metric = header((_IDMAP2,))
        flat, fd, fn, fmetric = header((_FLAT_IP, _FLAT_L2))
        (nfloats,) = struct.unpack("<Q", take(8))
        if (fd, fn, fmetric) != (d, ntotal, metric) or nfloats != ntotal * d:
            raise ValueError("inconsistent faiss index")
        if (flat == _FLAT_IP) != (metric == _METRIC_IP):
            raise ValueError("inconsistent faiss index metric")
        # a read-only view of the object's bytes (little-endian float32: numpy's float32 on the
        # hosts Lambda runs); adds and removals build new arrays
        vectors = np.frombuffer(take(4 * nfloats), dtype="<f4").reshape(ntotal, d)
        (nids,) = struct.unpack("<Q", take(8))
        if nids != ntotal:
            raise ValueError("inconsistent faiss id map")
        ids = np.frombuffer(take(8 * nids), dtype="<i8").astype(np.int64)
        if pos != len(buf):
            raise ValueError("trailing bytes after the faiss index")
        return cls(d, "ip" if metric == _METRIC_IP else "l2", vectors, ids)


class _FaissLibIndex:
    """The same interface over real faiss (the dev/test environment's oracle; ``engine="faiss"``)."""

    def __init__(self, index: Any):
        self.index = index

    @classmethod
    def new(cls, dimension: int, metric: Literal["ip", "l2"]) -> _FaissLibIndex:
        faiss = _faiss()
        flat = faiss.IndexFlatIP(dimension) if metric == "ip" else faiss.IndexFlatL2(dimension)
        return cls(faiss.IndexIDMap2(flat))

    @classmethod
    def deserialize(cls, raw: bytes | memoryview) -> _FaissLibIndex:
        import numpy as np

        return cls(_faiss().deserialize_index(np.frombuffer(raw, dtype=np.uint8)))

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add_with_ids(self, x: Any, ids: Any) -> None:
        import numpy as np

        self.index.add_with_ids(np.ascontiguousarray(x, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def remove_ids(self, ids: Any) -> int:
        import numpy as np

        return int(self.index.remove_ids(_faiss().IDSelectorBatch(np.asarray(ids, dtype=np.int64))))

    def search(self, query: Any, k: int, allowed: Any = None) -> list[tuple[float, int]]:
        import numpy as np

        faiss = _faiss()
        k = min(k, self.ntotal)
        if k <= 0:
            return []
        params = None
        if allowed is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64)))
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        scores, fids = self.index.search(q, k, params=params)
        return [(s, f) for s, f in zip(scores[0].tolist(), fids[0].tolist()) if f >= 0]

    def serialize(self) -> bytes:
        return _faiss().serialize_index(self.index).tobytes()


def _normalized(x: Any) -> Any:
    """Rows scaled to unit L2 norm as ``faiss.normalize_L2`` does (float32; zero rows stay zero)."""
    import numpy as np

    x = np.array(x, dtype=np.float32, copy=True)
    n2 = np.einsum("ij,ij->i", x, x)
    nz = n2 > 0
    x[nz] *= (np.float32(1) / np.sqrt(n2[nz]))[:, None]
    return x


@dataclass
class _FaissSpace:
    index: Any  # FlatIndex or _FaissLibIndex: IndexIDMap2 over a flat index, by faiss id
    dimension: int
    distance: Distance
    ids: dict[int, str]  # faiss int64 id -> our id
    payloads: dict[int, dict[str, Any]]
    next_id: int
    etag: str | None = None
    checked_at: float = 0.0  # monotonic time of the last read from (or write to) S3

    def by_pid(self) -> dict[str, int]:
        return {v: k for k, v in self.ids.items()}


ENGINES: dict[str, Any] = {"numpy": FlatIndex, "faiss": _FaissLibIndex}


class FaissS3Store:
    """Exact flat indexes, one S3 object per space: header JSON (ids, payloads) + the index in
    faiss's serialization (``IndexIDMap2`` over ``IndexFlatIP`` / ``IndexFlatL2``).

    ``engine``: ``"numpy"`` (the default, and what the Lambda functions run: ``FlatIndex``, no
    faiss in the package) or ``"faiss"`` (real faiss, where it is installed: the dev/test
    environment's oracle). Both read and write the same objects and give the same answers.

    Reads are cached in the process by ETag: a warm Lambda re-validates with one conditional GET
    (304 Not Modified), at most once per ``revalidate_s`` — 0 (the default) re-validates on every
    query; a second or so saves that round trip on hot read paths at the price of answers up to
    that old. Writes read-modify-write the object with ``If-Match`` on the
    ETag read (``If-None-Match: *`` to create), retrying on 412: two writers never lose each
    other's points.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "rag/faiss/",
        client: Any | None = None,
        max_retries: int = 5,
        revalidate_s: float = 0.0,
        engine: Literal["numpy", "faiss"] = "numpy",
    ):
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}: one of {sorted(ENGINES)}")
        self.bucket = bucket
        self.revalidate_s = revalidate_s
        self.prefix = prefix
        self.engine = engine
        self._client = client
        self.max_retries = max_retries
        self._cache: dict[str, _FaissSpace] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("s3")
        return self._client

    def _key(self, space: str) -> str:
        return f"{self.prefix}{space}.faiss"

    # ---- (de)serialization
    def _new_index(self, dimension: int, distance: Distance) -> Any:
        metric = "l2" if distance == "euclid" else "ip"
        if self.engine == "numpy":
            return FlatIndex(dimension, metric)
        return _FaissLibIndex.new(dimension, metric)

    @staticmethod
    def _dump(sp: _FaissSpace) -> bytes:
        header = orjson.dumps(
            {
                "dimension": sp.dimension,
                "distance": sp.distance,
                "next_id": sp.next_id,
                "ids": [[k, v] for k, v in sp.ids.items()],
                "payloads": [[k, v] for k, v in sp.payloads.items()],
            }
        )
        return _MAGIC + struct.pack(">Q", len(header)) + header + sp.index.serialize()

    def _load(self, raw: bytes, etag: str | None) -> _FaissSpace:
        if not raw.startswith(_MAGIC):
            raise ValueError("not an ig3 faiss object")
        (n,) = struct.unpack(">Q", raw[len(_MAGIC) : len(_MAGIC) + 8])
        start = len(_MAGIC) + 8
        h = orjson.loads(raw[start : start + n])
        index = ENGINES[self.engine].deserialize(memoryview(raw)[start + n :])
        if index.ntotal != len(h["ids"]):
            raise ValueError("ig3 faiss object: the index and its id table disagree")
        return _FaissSpace(
            index,
            h["dimension"],
            h["distance"],
            {int(k): v for k, v in h["ids"]},
            {int(k): v for k, v in h["payloads"]},
            h["next_id"],
            etag,
        )

    def _get(self, space: str, *, fresh: bool = False) -> _FaissSpace:
        cached = None if fresh else self._cache.get(space)
        if cached is not None and time.monotonic() - cached.checked_at < self.revalidate_s:
            return cached
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(space)}
        if cached is not None and cached.etag:
            kwargs["IfNoneMatch"] = cached.etag
        try:
            obj = self.client.get_object(**kwargs)
        except Exception as exc:  # noqa: BLE001 — botocore ClientError: map by its code
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("304", "NotModified") and cached is not None:
                cached.checked_at = time.monotonic()
                return cached
            if code in ("NoSuchKey", "404"):
                raise SpaceNotFound(space) from None
            raise
        sp = self._load(obj["Body"].read(), obj["ETag"])
        sp.checked_at = time.monotonic()
        self._cache[space] = sp
        return sp

    def _put(self, space: str, sp: _FaissSpace, *, create: bool = False) -> bool:
        """Conditional write; False when another writer got there first (412 / 409)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(space), "Body": self._dump(sp)}
        if create:
            kwargs["IfNoneMatch"] = "*"
        elif sp.etag:
            kwargs["IfMatch"] = sp.etag
        try:
            resp = self.client.put_object(**kwargs)
        except Exception as exc:  # noqa: BLE001
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                self._cache.pop(space, None)
                return False
            raise
        sp.etag = resp.get("ETag")
        sp.checked_at = time.monotonic()
        self._cache[space] = sp
        return True

    def _mutate(self, space: str, change) -> Any:
        for _ in range(self.max_retries):
            sp = self._get(space, fresh=True)
            result = change(sp)
            if self._put(space, sp):
                return result
        raise RuntimeError(f"faiss space {space}: too many concurrent writers")

    # ---- the port
    def create(self, space: str, dimension: int, distance: Distance) -> None:
        sp = _FaissSpace(self._new_index(dimension, distance), dimension, distance, {}, {}, 1)
        self._put(space, sp, create=True)  # False: it exists already, which is what was asked

    def drop(self, space: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(space))
        self._cache.pop(space, None)

    @staticmethod
    def _matrix(vectors: list[list[float]], sp: _FaissSpace) -> Any:
        import numpy as np

        x = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), sp.dimension)
        return _normalized(x) if sp.distance == "cosine" else x

    @staticmethod
    def _remove(sp: _FaissSpace, fids: list[int]) -> int:
        if not fids:
            return 0
        sp.index.remove_ids(fids)
        for f in fids:
            sp.ids.pop(f, None)
            sp.payloads.pop(f, None)
        return len(fids)

    def upsert(self, space: str, points: list[Point]) -> None:
        if not points:
            return

        def change(sp: _FaissSpace) -> None:
            if any(len(p.vector) != sp.dimension for p in points):
                raise ValueError(f"vectors must have {sp.dimension} dimensions")
            by_pid = sp.by_pid()
            self._remove(sp, [by_pid[p.id] for p in points if p.id in by_pid])
            fids = list(range(sp.next_id, sp.next_id + len(points)))
            sp.next_id += len(points)
            sp.index.add_with_ids(self._matrix([p.vector for p in points], sp), fids)
            for f, p in zip(fids, points):
                sp.ids[f] = p.id
                sp.payloads[f] = p.payload

        self._mutate(space, change)

    def delete(self, space: str, *, ids: list[str] | None = None, filter: Filter | None = None) -> int:
        if ids is None and not filter:
            return 0

        wanted = set(ids) if ids is not None else None

        def doomed(sp: _FaissSpace) -> list[int]:
            return [
                f
                for f, pid in sp.ids.items()
                if (wanted is None or pid in wanted) and matches(sp.payloads[f], filter)
            ]

        if not doomed(self._get(space, fresh=True)):
            return 0  # nothing matches: no write at all
        return self._mutate(space, lambda sp: self._remove(sp, doomed(sp)))

    def query(
        self,
        space: str,
        vector: list[float],
        *,
        top_k: int,
        score_threshold: float | None = None,
        filter: Filter | None = None,
    ) -> list[Hit]:
        import math

        sp = self._get(space)
        if len(vector) != sp.dimension:
            raise ValueError(f"the query vector must have {sp.dimension} dimensions")
        allowed = None
        if filter:
            allowed = [f for f, p in sp.payloads.items() if matches(p, filter)]
            if not allowed:
                return []
        k = min(top_k, sp.index.ntotal)
        if k <= 0:
            return []
        out = []
        for score, f in sp.index.search(self._matrix([vector], sp)[0], k, allowed):
            if sp.distance == "euclid":
                score = math.sqrt(max(score, 0.0))  # flat L2 indexes answer squared distances
                if score_threshold is not None and score > score_threshold:
                    continue
            elif score_threshold is not None and score < score_threshold:
                continue
            out.append(Hit(sp.ids[f], float(score), sp.payloads[f]))
        return out

    def count(self, space: str, *, filter: Filter | None = None) -> int:
        sp = self._get(space, fresh=filter is not None)  # a writer's count (ingestion jobs): never stale
        if not filter:
            return sp.index.ntotal
        return sum(1 for p in sp.payloads.values() if matches(p, filter))


def space_name(owner: str, name: str, uid: str) -> str:
    """A store-side name that reveals neither the wallet nor the collection's name."""
    return "c" + hashlib.sha256(f"{owner.lower()}\x00{name}\x00{uid}".encode()).hexdigest()[:32]
