"""Collection records: who owns which collection, with which model, dimension, distance and store.

Keyed by (owner, name): a wallet can only ever address its own collections — another wallet's
collection of the same name is simply a different item, so ownership needs no check that could
be forgotten. Creation is a conditional put (exactly once); counters move with atomic ADDs.

Storage metering: ``metered_ms`` is the start of the collection's open storage interval. Every
change of the vector count (and the hourly meter, and deletion) closes that interval in the same
atomic update that changes the count — it returns the old count and the old ``metered_ms`` and
sets ``metered_ms`` to now — so consecutive intervals tile time with no gap and no overlap, and
each is billed exactly once (``ig3.billing.storage``: the ledger entry is keyed by uid + start).
The interval never goes backwards: a writer whose clock is behind ``metered_ms`` closes a
zero-length interval instead.

A change applied by an ingestion job's batch carries a token (``job_<id>`` = last batch applied):
the update is conditional on it, so a redelivered batch never counts its chunks twice.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ig3.errors import Conflict


@dataclass(frozen=True)
class StorageInterval:
    """A closed storage interval: ``vectors`` were stored from ``from_ms`` to ``to_ms``."""

    from_ms: int
    to_ms: int
    vectors: int  # during the interval
    vectors_after: int  # once the change that closed it applied


@dataclass
class CollectionRecord:
    owner: str
    name: str
    uid: str  # fresh per creation: a re-created collection never sees the old one's vectors
    store: str  # "qdrant" | "faiss"
    embedding_model: str
    dimension: int
    distance: str
    chunk_size: int
    chunk_overlap: int
    created_at: float = field(default_factory=time.time)
    chunks: int = 0  # stored vectors, net of deletions
    metered_ms: int = 0  # start of the open storage interval (0: created_at)

    @property
    def interval_start_ms(self) -> int:
        return self.metered_ms or int(self.created_at * 1000)

    @property
    def vector_bytes(self) -> int:
        """What the collection stores, for storage metering: float32 vectors."""
        return self.chunks * self.dimension * 4

    def public_view(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("owner")
        d.pop("uid")
        d.pop("metered_ms")
        d["object"] = "collection"
        d["vector_bytes"] = self.vector_bytes
        return d


class CollectionRegistry(Protocol):
    def create(self, rec: CollectionRecord) -> None: ...  # raises Conflict when the name is taken
    def get(self, owner: str, name: str) -> CollectionRecord | None: ...
    def list(self, owner: str) -> list[CollectionRecord]: ...
    def delete(self, owner: str, name: str) -> CollectionRecord | None: ...
    def add_chunks(
        self,
        owner: str,
        name: str,
        uid: str,
        delta: int,
        *,
        now_ms: int,
        token: tuple[str, int] | None = None,
    ) -> StorageInterval | None: ...  # None: the collection is gone, or the token was applied already
    def scan(self) -> list[CollectionRecord]: ...  # every collection (the hourly meter)


class MemoryRegistry:
    """In-memory registry for pure unit tests."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], CollectionRecord] = {}

    def create(self, rec: CollectionRecord) -> None:
        if (rec.owner, rec.name) in self.items:
            raise Conflict(f"collection {rec.name!r} already exists", code="collection_exists")
        self.items[(rec.owner, rec.name)] = rec

    def get(self, owner: str, name: str) -> CollectionRecord | None:
        return self.items.get((owner, name))

    def list(self, owner: str) -> list[CollectionRecord]:
        return sorted((r for (o, _), r in self.items.items() if o == owner), key=lambda r: r.name)

    def delete(self, owner: str, name: str) -> CollectionRecord | None:
        return self.items.pop((owner, name), None)

    def add_chunks(
        self,
        owner: str,
        name: str,
        uid: str,
        delta: int,
        *,
        now_ms: int,
        token: tuple[str, int] | None = None,
    ) -> StorageInterval | None:
        r = self.items.get((owner, name))
        if r is None or r.uid != uid:
            return None
        applied = getattr(r, "_tokens", {})
        if token is not None and applied.get(token[0], -1) >= token[1]:
            return None
        start = r.interval_start_ms
        end = max(now_ms, start)
        before = r.chunks
        r.chunks += delta
        r.metered_ms = end
        if token is not None:
            applied[token[0]] = token[1]
            r._tokens = applied  # type: ignore[attr-defined]
        return StorageInterval(start, end, before, r.chunks)

    def forget_token(self, owner: str, name: str, uid: str, job: str) -> None:
        r = self.items.get((owner, name))
        if r is not None and r.uid == uid:
            getattr(r, "_tokens", {}).pop(job, None)

    def scan(self) -> list[CollectionRecord]:
        return list(self.items.values())


_INTS = ("dimension", "chunk_size", "chunk_overlap", "chunks", "metered_ms")
_UPDATE_ATTEMPTS = 5


class DynamoRegistry:
    """The ``rag_collections`` table (pk ``owner``, sk ``name``)."""

    def __init__(self, table: str, client: Any | None = None):
        self.table = table
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("dynamodb")
        return self._client

    @staticmethod
    def _item(rec: CollectionRecord) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in asdict(rec).items():
            out[k] = {"N": str(v)} if isinstance(v, (int, float)) else {"S": str(v)}
        return out

    @staticmethod
    def _record(item: dict[str, Any]) -> CollectionRecord:
        d: dict[str, Any] = {}
        for k, v in item.items():
            if "N" in v:
                d[k] = int(v["N"]) if k in _INTS else float(v["N"])
            else:
                d[k] = v["S"]
        return CollectionRecord(**{k: d[k] for k in CollectionRecord.__dataclass_fields__ if k in d})

    def create(self, rec: CollectionRecord) -> None:
        try:
            self.client.put_item(
                TableName=self.table,
                Item=self._item(rec),
                ConditionExpression="attribute_not_exists(#o)",
                ExpressionAttributeNames={"#o": "owner"},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            raise Conflict(f"collection {rec.name!r} already exists", code="collection_exists") from None

    def get(self, owner: str, name: str) -> CollectionRecord | None:
        r = self.client.get_item(
            TableName=self.table, Key={"owner": {"S": owner}, "name": {"S": name}}, ConsistentRead=True
        )
        return self._record(r["Item"]) if "Item" in r else None

    def list(self, owner: str) -> list[CollectionRecord]:
        out: list[CollectionRecord] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "#o = :o",
            "ExpressionAttributeNames": {"#o": "owner"},
            "ExpressionAttributeValues": {":o": {"S": owner}},
        }
        while True:
            r = self.client.query(**kwargs)
            out += [self._record(i) for i in r.get("Items", [])]
            if "LastEvaluatedKey" not in r:
                return out
            kwargs["ExclusiveStartKey"] = r["LastEvaluatedKey"]

    def delete(self, owner: str, name: str) -> CollectionRecord | None:
        r = self.client.delete_item(
            TableName=self.table, Key={"owner": {"S": owner}, "name": {"S": name}}, ReturnValues="ALL_OLD"
        )
        return self._record(r["Attributes"]) if r.get("Attributes") else None

    def add_chunks(
        self,
        owner: str,
        name: str,
        uid: str,
        delta: int,
        *,
        now_ms: int,
        token: tuple[str, int] | None = None,
    ) -> StorageInterval | None:
        key = {"owner": {"S": owner}, "name": {"S": name}}
        names: dict[str, str] = {"#m": "metered_ms"}
        values: dict[str, Any] = {":c": {"N": str(delta)}, ":u": {"S": uid}}
        cond = "uid = :u AND (attribute_not_exists(#m) OR #m <= :now)"
        update = "ADD chunks :c SET #m = :now"
        if token is not None:
            names["#j"] = f"job_{token[0]}"
            values[":b"] = {"N": str(token[1])}
            cond += " AND (attribute_not_exists(#j) OR #j < :b)"
            update += ", #j = :b"
        for _ in range(_UPDATE_ATTEMPTS):
            values[":now"] = {"N": str(now_ms)}
            try:
                r = self.client.update_item(
                    TableName=self.table, Key=key, UpdateExpression=update, ConditionExpression=cond,
                    ExpressionAttributeNames=names, ExpressionAttributeValues=values, ReturnValues="ALL_OLD",
                )
            except self.client.exceptions.ConditionalCheckFailedException:
                # Which part failed? Gone / re-created, the token already applied, or our clock behind.
                cur = self.client.get_item(TableName=self.table, Key=key, ConsistentRead=True).get("Item")
                if cur is None or cur["uid"]["S"] != uid:
                    return None
                applied = cur.get(f"job_{token[0]}") if token is not None else None
                if token is not None and applied is not None and int(applied["N"]) >= token[1]:
                    return None
                now_ms = max(now_ms, int(cur.get("metered_ms", {"N": "0"})["N"]))
                continue
            old = self._record(r["Attributes"])
            return StorageInterval(old.interval_start_ms, max(now_ms, old.interval_start_ms), old.chunks,
                                   old.chunks + delta)
        raise Conflict(f"collection {name!r} is changing too fast; retry", code="collection_busy")

    def forget_token(self, owner: str, name: str, uid: str, job: str) -> None:
        """Drop a finished job's token (it only guards that job's redeliveries)."""
        try:
            self.client.update_item(
                TableName=self.table, Key={"owner": {"S": owner}, "name": {"S": name}},
                UpdateExpression="REMOVE #j", ConditionExpression="uid = :u",
                ExpressionAttributeNames={"#j": f"job_{job}"}, ExpressionAttributeValues={":u": {"S": uid}},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            pass

    def scan(self) -> list[CollectionRecord]:
        out: list[CollectionRecord] = []
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        while True:
            r = self.client.scan(**kwargs)
            out += [self._record(i) for i in r.get("Items", [])]
            if "LastEvaluatedKey" not in r:
                return out
            kwargs["ExclusiveStartKey"] = r["LastEvaluatedKey"]
