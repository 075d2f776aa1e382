"""Long-lived API keys: ``ig3_sk_<key id>_<secret>``, shown once, stored only as SHA-256.

Design decisions:
- The key id is part of the key, so a lookup is one ``GetItem`` by id; the stored SHA-256 of
  the whole key is compared in constant time. Keys carry 256 random bits, so a plain SHA-256
  (not a slow password hash) is the right tool: there is nothing to brute-force.
- The hot path (every request) never reaches DynamoDB twice: an in-process cache (short
  TTL, bounds how late a revocation is seen by other containers, default 5 s) in front of
  Redis (shared across containers, 60 s), in front of DynamoDB. Both caches are keyed by the
  key's hash, never by the key. Revocation writes DynamoDB (conditional on the owner), then
  overwrites the Redis entry with a tombstone, so other containers see it on their next
  Redis read. Redis being down degrades to DynamoDB reads, never to accepting a key blindly.
- Limits (rpm, tpm, budget in the smallest credit unit) are stored on the key and handed to
  callers in the Principal; enforcing them belongs to the LLM gateway and billing.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Protocol

import orjson

from ig3.errors import BadRequest, Forbidden, NotFound, Unauthorized

KEY_PREFIX = "ig3_sk_"
_KEY_ID_LEN = 16
_KEY_RE = re.compile(rf"{KEY_PREFIX}(?P<id>[0-9a-f]{{{_KEY_ID_LEN}}})_(?P<secret>[A-Za-z0-9_-]{{43}})")
SCOPE_RE = re.compile(r"\*|[a-z][a-z0-9_.:-]{0,63}")
MAX_KEYS_PER_OWNER = 100


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(key id, full key)."""
    key_id = secrets.token_hex(_KEY_ID_LEN // 2)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    m = _KEY_RE.fullmatch(key)
    return m["id"] if m else None


@dataclass(frozen=True)
class ApiKeyRecord:
    key_id: str
    key_hash: str
    owner: str  # the wallet (or DID) the key acts for
    name: str
    scopes: tuple[str, ...]
    tier: str
    created_at: int
    expires_at: int | None = None
    revoked_at: int | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    budget: int | None = None  # in the smallest iG3 credit unit

    def public(self) -> dict[str, Any]:
        """What the owner may see again: everything but the hash."""
        d = asdict(self)
        d.pop("key_hash")
        d["scopes"] = list(self.scopes)
        d["id"] = d.pop("key_id")
        d["hint"] = f"{KEY_PREFIX}{self.key_id}_…"
        return d

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> ApiKeyRecord:
        d = orjson.loads(raw)
        d["scopes"] = tuple(d["scopes"])
        return cls(**d)


class ApiKeyStore(Protocol):
    def put_new(self, record: ApiKeyRecord) -> None: ...

    def get(self, key_id: str) -> ApiKeyRecord | None: ...

    def list_by_owner(self, owner: str) -> list[ApiKeyRecord]: ...

    def revoke(self, key_id: str, owner: str, at: int) -> ApiKeyRecord | None:
        """Mark revoked if it exists and belongs to owner (idempotent); None otherwise."""


_INT_FIELDS = ("created_at", "expires_at", "revoked_at", "rpm_limit", "tpm_limit", "budget")


class DynamoApiKeyStore:
    """Table ``api_keys``: pk ``key_id``, GSI ``by_owner`` (owner)."""

    def __init__(self, table_name: str, client: Any | None = None):
        self._table = table_name
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("dynamodb")
        return self._client

    @staticmethod
    def _to_item(r: ApiKeyRecord) -> dict[str, Any]:
        item: dict[str, Any] = {"key_id": {"S": r.key_id}, "key_hash": {"S": r.key_hash}, "owner": {"S": r.owner},
                                "name": {"S": r.name}, "tier": {"S": r.tier},
                                "scopes": {"L": [{"S": s} for s in r.scopes]}}
        for f in _INT_FIELDS:
            v = getattr(r, f)
            if v is not None:
                item[f] = {"N": str(v)}
        return item

    @staticmethod
    def _from_item(item: dict[str, Any]) -> ApiKeyRecord:
        ints = {f: int(item[f]["N"]) for f in _INT_FIELDS if f in item}
        return ApiKeyRecord(key_id=item["key_id"]["S"], key_hash=item["key_hash"]["S"], owner=item["owner"]["S"],
                            name=item["name"]["S"], tier=item["tier"]["S"],
                            scopes=tuple(s["S"] for s in item["scopes"]["L"]), **ints)

    def put_new(self, record: ApiKeyRecord) -> None:
        self.client.put_item(TableName=self._table, Item=self._to_item(record),
                             ConditionExpression="attribute_not_exists(key_id)")

    def get(self, key_id: str) -> ApiKeyRecord | None:
        item = self.client.get_item(TableName=self._table, Key={"key_id": {"S": key_id}},
                                    ConsistentRead=True).get("Item")
        return self._from_item(item) if item else None

    def list_by_owner(self, owner: str) -> list[ApiKeyRecord]:
        out, start = [], None
        while True:
            kw: dict[str, Any] = {"TableName": self._table, "IndexName": "by_owner",
                                  "KeyConditionExpression": "#o = :o", "ExpressionAttributeNames": {"#o": "owner"},
                                  "ExpressionAttributeValues": {":o": {"S": owner}}}
            if start:
                kw["ExclusiveStartKey"] = start
            resp = self.client.query(**kw)
            out += [self._from_item(i) for i in resp.get("Items", [])]
            start = resp.get("LastEvaluatedKey")
            if not start:
                return sorted(out, key=lambda r: (r.created_at, r.key_id))

    def revoke(self, key_id: str, owner: str, at: int) -> ApiKeyRecord | None:
        try:
            resp = self.client.update_item(
                TableName=self._table, Key={"key_id": {"S": key_id}},
                UpdateExpression="SET revoked_at = if_not_exists(revoked_at, :at)",
                ConditionExpression="attribute_exists(key_id) AND #o = :o",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":at": {"N": str(at)}, ":o": {"S": owner}}, ReturnValues="ALL_NEW")
        except self.client.exceptions.ConditionalCheckFailedException:
            return None
        return self._from_item(resp["Attributes"])


class MemoryApiKeyStore:
    def __init__(self) -> None:
        self._items: dict[str, ApiKeyRecord] = {}
        self._lock = threading.Lock()

    def put_new(self, record: ApiKeyRecord) -> None:
        with self._lock:
            if record.key_id in self._items:
                raise ValueError("duplicate key id")
            self._items[record.key_id] = record

    def get(self, key_id: str) -> ApiKeyRecord | None:
        return self._items.get(key_id)

    def list_by_owner(self, owner: str) -> list[ApiKeyRecord]:
        return sorted((r for r in self._items.values() if r.owner == owner), key=lambda r: (r.created_at, r.key_id))

    def revoke(self, key_id: str, owner: str, at: int) -> ApiKeyRecord | None:
        with self._lock:
            r = self._items.get(key_id)
            if r is None or r.owner != owner:
                return None
            if r.revoked_at is None:
                r = self._items[key_id] = replace(r, revoked_at=at)
            return r


_TOMBSTONE = b"revoked"
_MISSING = b"missing"


class ApiKeyService:
    def __init__(self, store: ApiKeyStore, *, redis: Any | None = None, redis_prefix: str = "ig3:apikey:",
                 local_ttl_s: float = 5.0, redis_ttl_s: int = 60, default_tier: str = "standard",
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 cache_size: int = 10_000):
        self._store = store
        self._redis = redis
        self._prefix = redis_prefix
        self._local_ttl = local_ttl_s
        self._redis_ttl = redis_ttl_s
        self._tier = default_tier
        self._clock = clock
        self._mono = monotonic
        self._local: dict[str, tuple[ApiKeyRecord | None, float]] = {}
        self._cache_size = cache_size
        # After a Redis error, skip Redis for a while: a dead Redis (whose client retries with
        # backoff) must not add seconds to every key lookup. DynamoDB stays the truth meanwhile.
        self._redis_skip_until = 0.0
        self.redis_pause_s = 5.0

    # --- management (the /v1/keys routes) -------------------------------------------------
    def create(self, owner: str, *, name: str, scopes: list[str], caller_scopes: frozenset[str],
               expires_in_s: int | None = None, rpm_limit: int | None = None, tpm_limit: int | None = None,
               budget: int | None = None, tier: str | None = None) -> tuple[str, ApiKeyRecord]:
        if not scopes:
            raise BadRequest("a key needs at least one scope", code="invalid_scope")
        for s in scopes:
            if not SCOPE_RE.fullmatch(s):
                raise BadRequest(f"invalid scope {s[:64]!r}", code="invalid_scope")
            if "*" not in caller_scopes and s not in caller_scopes:
                raise Forbidden(f"cannot grant scope '{s}' that this credential does not hold",
                                code="insufficient_scope")
        now = int(self._clock())
        live = [r for r in self._store.list_by_owner(owner)
                if r.revoked_at is None and (r.expires_at is None or r.expires_at > now)]
        if len(live) >= MAX_KEYS_PER_OWNER:
            raise Forbidden(f"at most {MAX_KEYS_PER_OWNER} live API keys per account: revoke one first",
                            code="too_many_keys")
        key_id, key = new_key()
        record = ApiKeyRecord(key_id=key_id, key_hash=hash_key(key), owner=owner, name=name,
                              scopes=tuple(dict.fromkeys(scopes)), tier=tier or self._tier, created_at=now,
                              expires_at=now + expires_in_s if expires_in_s else None,
                              rpm_limit=rpm_limit, tpm_limit=tpm_limit, budget=budget)
        self._store.put_new(record)
        return key, record

    def list(self, owner: str) -> list[ApiKeyRecord]:
        return self._store.list_by_owner(owner)

    def revoke(self, owner: str, key_id: str) -> ApiKeyRecord:
        record = self._store.revoke(key_id, owner, int(self._clock()))
        if record is None:
            raise NotFound(f"no API key {key_id[:32]!r} for this account", code="key_not_found")
        self._local[record.key_hash] = (None, self._mono())
        if self._redis is not None:
            try:  # always tried (not skipped while paused): other containers must see the revocation
                self._redis.set(self._prefix + record.key_hash, _TOMBSTONE, ex=self._redis_ttl)
            except Exception:  # noqa: BLE001 - DynamoDB is the truth; the cache entry expires anyway
                self._redis_failed()
        return record

    def _redis_usable(self) -> bool:
        return self._redis is not None and self._mono() >= self._redis_skip_until

    def _redis_failed(self) -> None:
        self._redis_skip_until = self._mono() + self.redis_pause_s

    # --- the hot path ----------------------------------------------------------------------
    def resolve(self, key: str) -> ApiKeyRecord:
        """The live record for a presented key; Unauthorized if unknown, revoked or expired."""
        key_hash = hash_key(key)
        now_mono = self._mono()
        hit = self._local.get(key_hash)
        if hit is not None and now_mono - hit[1] < self._local_ttl:
            record = hit[0]
        else:
            record = self._load(key, key_hash)
            if len(self._local) >= self._cache_size:
                self._local.pop(next(iter(self._local)))
            self._local[key_hash] = (record, now_mono)
        if record is None:
            raise Unauthorized("API key is unknown or revoked", code="invalid_api_key")
        if record.expires_at is not None and record.expires_at <= self._clock():
            raise Unauthorized("API key has expired", code="api_key_expired")
        return record

    def _load(self, key: str, key_hash: str) -> ApiKeyRecord | None:
        if self._redis_usable():
            try:
                raw = self._redis.get(self._prefix + key_hash)
            except Exception:  # noqa: BLE001 - degrade to DynamoDB
                raw = None
                self._redis_failed()
            if raw in (_TOMBSTONE, _MISSING):
                return None
            if raw is not None:
                return ApiKeyRecord.from_json(raw)
        key_id = key_id_of(key)
        record = self._store.get(key_id) if key_id else None
        if record is not None and (record.revoked_at is not None
                                   or not hmac.compare_digest(record.key_hash, key_hash)):
            record = None
        if key_id and self._redis_usable():
            try:
                self._redis.set(self._prefix + key_hash, record.to_json() if record else _MISSING,
                                ex=self._redis_ttl if record else min(self._redis_ttl, 10))
            except Exception:  # noqa: BLE001
                self._redis_failed()
        return record
