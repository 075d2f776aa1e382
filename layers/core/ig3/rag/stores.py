"""The ``VectorStore`` port and its two adapters, which pass the same contract tests.

Choosing per collection (the trade-off):
- **Qdrant** (the default where configured): a server (URL + API key in production; the
  client's embedded local mode in the local cloud). Incremental upserts and deletes,
  payload-filtered HNSW search, scales to millions of vectors, concurrent writers. Costs a
  running service.
- **Faiss**: an exact flat index persisted as one S3 object and loaded by the function (cached
  by ETag between invocations). No server at all and exact results, but every write rewrites
  the object (optimistic concurrency with S3 conditional writes) and the whole index is loaded
  into memory: for small, read-mostly collections (up to ~100k vectors of 384 floats = 150 MB).

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
    """Qdrant through ``qdrant-client``: ``url`` + ``api_key`` (server) or ``path`` (embedded local mode).

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
        return str(uuid.uuid5(uuid.NAMESPACE_URL, "ig3:" + point_id))

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


@dataclass
class _FaissSpace:
    index: Any  # faiss.IndexIDMap2 over a flat index
    dimension: int
    distance: Distance
    ids: dict[int, str]  # faiss int64 id -> our id
    payloads: dict[int, dict[str, Any]]
    next_id: int
    etag: str | None = None
    checked_at: float = 0.0  # monotonic time of the last read from (or write to) S3

    def by_pid(self) -> dict[str, int]:
        return {v: k for k, v in self.ids.items()}


class FaissS3Store:
    """Exact Faiss indexes, one S3 object per space: header JSON (ids, payloads) + serialized index.

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
    ):
        self.bucket = bucket
        self.revalidate_s = revalidate_s
        self.prefix = prefix
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
    @staticmethod
    def _new_index(dimension: int, distance: Distance) -> Any:
        faiss = _faiss()

        flat = faiss.IndexFlatL2(dimension) if distance == "euclid" else faiss.IndexFlatIP(dimension)
        return faiss.IndexIDMap2(flat)

    @staticmethod
    def _dump(sp: _FaissSpace) -> bytes:
        faiss = _faiss()

        header = orjson.dumps(
            {
                "dimension": sp.dimension,
                "distance": sp.distance,
                "next_id": sp.next_id,
                "ids": [[k, v] for k, v in sp.ids.items()],
                "payloads": [[k, v] for k, v in sp.payloads.items()],
            }
        )
        return _MAGIC + struct.pack(">Q", len(header)) + header + faiss.serialize_index(sp.index).tobytes()

    @staticmethod
    def _load(raw: bytes, etag: str) -> _FaissSpace:
        faiss = _faiss()
        import numpy as np

        if not raw.startswith(_MAGIC):
            raise ValueError("not an ig3 faiss object")
        (n,) = struct.unpack(">Q", raw[len(_MAGIC) : len(_MAGIC) + 8])
        start = len(_MAGIC) + 8
        h = orjson.loads(raw[start : start + n])
        index = faiss.deserialize_index(np.frombuffer(raw[start + n :], dtype=np.uint8))
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
        faiss = _faiss()
        import numpy as np

        x = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), sp.dimension)
        if sp.distance == "cosine":
            x = np.ascontiguousarray(x)
            faiss.normalize_L2(x)
        return x

    @staticmethod
    def _remove(sp: _FaissSpace, fids: list[int]) -> int:
        faiss = _faiss()
        import numpy as np

        if not fids:
            return 0
        sp.index.remove_ids(faiss.IDSelectorBatch(np.asarray(fids, dtype=np.int64)))
        for f in fids:
            sp.ids.pop(f, None)
            sp.payloads.pop(f, None)
        return len(fids)

    def upsert(self, space: str, points: list[Point]) -> None:
        import numpy as np

        if not points:
            return

        def change(sp: _FaissSpace) -> None:
            if any(len(p.vector) != sp.dimension for p in points):
                raise ValueError(f"vectors must have {sp.dimension} dimensions")
            by_pid = sp.by_pid()
            self._remove(sp, [by_pid[p.id] for p in points if p.id in by_pid])
            fids = list(range(sp.next_id, sp.next_id + len(points)))
            sp.next_id += len(points)
            sp.index.add_with_ids(
                self._matrix([p.vector for p in points], sp), np.asarray(fids, dtype=np.int64)
            )
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
        faiss = _faiss()
        import numpy as np

        sp = self._get(space)
        if len(vector) != sp.dimension:
            raise ValueError(f"the query vector must have {sp.dimension} dimensions")
        params = None
        if filter:
            allowed = [f for f, p in sp.payloads.items() if matches(p, filter)]
            if not allowed:
                return []
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64)))
        k = min(top_k, sp.index.ntotal)
        if k == 0:
            return []
        scores, fids = sp.index.search(self._matrix([vector], sp), k, params=params)
        out = []
        for score, f in zip(scores[0].tolist(), fids[0].tolist()):
            if f < 0:
                continue
            if sp.distance == "euclid":
                score = float(np.sqrt(max(score, 0.0)))  # IndexFlatL2 answers squared distances
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
