"""API keys on DynamoDB (moto server) + Redis: shown once, stored hashed, scopes, expiry, limits,
revocation seen across containers (separate in-process caches sharing one Redis)."""
from __future__ import annotations

import hashlib
import time

import boto3
import pytest

from ig3.errors import BadRequest, Forbidden, NotFound, Unauthorized
from ig3.identity.apikeys import KEY_PREFIX, ApiKeyService, DynamoApiKeyStore, MemoryApiKeyStore, key_id_of
from ig3.topology import table_env

OWNER = "0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B"


@pytest.fixture
def ddb(aws_env, moto_endpoint):
    return boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def store(aws_env, ddb):
    return DynamoApiKeyStore(aws_env[table_env("api_keys")], client=ddb)


@pytest.fixture
def rds(redis_url):
    import redis

    return redis.Redis.from_url(redis_url)


def _svc(store, rds, prefix, **kw):
    return ApiKeyService(store, redis=rds, redis_prefix=prefix, **kw)


def test_create_resolve_list_revoke(store, rds, redis_prefix, ddb, aws_env):
    owner = OWNER[:-4] + "0001"
    svc = _svc(store, rds, redis_prefix)
    key, rec = svc.create(owner, name="ci", scopes=["llm", "tasks"], caller_scopes=frozenset({"*"}),
                          expires_in_s=3600, rpm_limit=60, tpm_limit=100_000, budget=5_000_000)
    assert key.startswith(KEY_PREFIX) and key_id_of(key) == rec.key_id and len(key) > 60
    item = ddb.get_item(TableName=aws_env[table_env("api_keys")], Key={"key_id": {"S": rec.key_id}})["Item"]
    assert item["key_hash"]["S"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in str(item) and key.split("_")[-1] not in str(item)  # only the hash is stored
    got = svc.resolve(key)
    assert (got.owner, got.scopes, got.rpm_limit, got.tpm_limit, got.budget) == (owner, ("llm", "tasks"), 60,
                                                                                   100_000, 5_000_000)
    listed = [r.public() for r in svc.list(owner)]
    assert [r["id"] for r in listed] == [rec.key_id] and "key_hash" not in listed[0] and "key" not in listed[0]
    assert svc.revoke(owner, rec.key_id).revoked_at is not None
    assert svc.revoke(owner, rec.key_id).revoked_at is not None  # idempotent
    with pytest.raises(Unauthorized) as exc:
        svc.resolve(key)
    assert exc.value.code == "invalid_api_key"


def test_revocation_reaches_other_containers_through_redis(store, rds, redis_prefix):
    owner = OWNER[:-4] + "0002"
    clock = [1000.0]
    a = _svc(store, rds, redis_prefix, local_ttl_s=5, monotonic=lambda: clock[0])
    b = _svc(store, rds, redis_prefix, local_ttl_s=5, monotonic=lambda: clock[0])
    key, rec = a.create(owner, name="", scopes=["llm"], caller_scopes=frozenset({"*"}))
    assert b.resolve(key).key_id == rec.key_id  # b caches it in-process
    a.revoke(owner, rec.key_id)
    assert b.resolve(key).key_id == rec.key_id  # within b's local TTL: the documented propagation delay
    clock[0] += 5.1
    with pytest.raises(Unauthorized):
        b.resolve(key)


def test_redis_down_degrades_to_dynamodb_and_pauses_redis(store):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    class Counting:
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def __getattr__(self, name):
            self.calls += 1
            return getattr(self.inner, name)

    dead = Counting(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2,
                                retry=Retry(NoBackoff(), 0)))
    svc = ApiKeyService(store, redis=dead)
    key, rec = svc.create(OWNER[:-4] + "0003", name="", scopes=["llm"], caller_scopes=frozenset({"*"}))
    assert svc.resolve(key).key_id == rec.key_id
    assert dead.calls == 1  # the failed GET paused Redis: no SET attempted after it
    svc._local.clear()
    assert svc.resolve(key).key_id == rec.key_id and dead.calls == 1  # still paused: straight to DynamoDB
    svc.revoke(rec.owner, rec.key_id)
    with pytest.raises(Unauthorized):
        ApiKeyService(store, redis=dead).resolve(key)


def test_expired_key(store, rds, redis_prefix):
    now = [time.time()]
    svc = _svc(store, rds, redis_prefix, clock=lambda: now[0])
    key, _ = svc.create(OWNER[:-4] + "0004", name="", scopes=["llm"], caller_scopes=frozenset({"*"}),
                        expires_in_s=60)
    assert svc.resolve(key)
    now[0] += 61
    with pytest.raises(Unauthorized) as exc:
        svc.resolve(key)
    assert exc.value.code == "api_key_expired"


@pytest.mark.parametrize("bad", ["ig3_sk_", "ig3_sk_0123456789abcdef_" + "A" * 43, "ig3_sk_zz", "ig3_sk_" + "x" * 500])
def test_unknown_or_malformed_keys(store, rds, redis_prefix, bad):
    with pytest.raises(Unauthorized) as exc:
        _svc(store, rds, redis_prefix).resolve(bad)
    assert exc.value.code == "invalid_api_key"


def test_a_forged_key_with_a_real_id_is_rejected(store, rds, redis_prefix):
    svc = _svc(store, rds, redis_prefix)
    key, rec = svc.create(OWNER[:-4] + "0005", name="", scopes=["llm"], caller_scopes=frozenset({"*"}))
    forged = key[: -3] + ("AAA" if not key.endswith("AAA") else "BBB")
    with pytest.raises(Unauthorized):
        svc.resolve(forged)
    assert svc.resolve(key).key_id == rec.key_id


def test_scope_rules():
    svc = ApiKeyService(MemoryApiKeyStore())
    with pytest.raises(Forbidden) as exc:  # cannot grant more than the creating credential holds
        svc.create(OWNER, name="", scopes=["billing"], caller_scopes=frozenset({"llm", "keys"}))
    assert exc.value.code == "insufficient_scope"
    with pytest.raises(BadRequest):
        svc.create(OWNER, name="", scopes=["Not A Scope"], caller_scopes=frozenset({"*"}))
    with pytest.raises(BadRequest):
        svc.create(OWNER, name="", scopes=[], caller_scopes=frozenset({"*"}))
    key, rec = svc.create(OWNER, name="", scopes=["llm", "llm"], caller_scopes=frozenset({"llm", "keys"}))
    assert rec.scopes == ("llm",)


def test_revoking_someone_elses_key_is_not_found(store, rds, redis_prefix):
    svc = _svc(store, rds, redis_prefix)
    key, rec = svc.create(OWNER[:-4] + "0006", name="", scopes=["llm"], caller_scopes=frozenset({"*"}))
    with pytest.raises(NotFound):
        svc.revoke(OWNER[:-4] + "0007", rec.key_id)
    with pytest.raises(NotFound):
        svc.revoke(OWNER[:-4] + "0006", "0000000000000000")
    assert svc.resolve(key)


def test_live_key_cap_counts_only_live_keys(monkeypatch):
    import ig3.identity.apikeys as apikeys

    monkeypatch.setattr(apikeys, "MAX_KEYS_PER_OWNER", 2)
    svc = ApiKeyService(MemoryApiKeyStore())
    _, a = svc.create(OWNER, name="a", scopes=["llm"], caller_scopes=frozenset({"*"}))
    svc.create(OWNER, name="b", scopes=["llm"], caller_scopes=frozenset({"*"}))
    with pytest.raises(Forbidden) as exc:
        svc.create(OWNER, name="c", scopes=["llm"], caller_scopes=frozenset({"*"}))
    assert exc.value.code == "too_many_keys"
    svc.revoke(OWNER, a.key_id)
    assert svc.create(OWNER, name="c", scopes=["llm"], caller_scopes=frozenset({"*"}))[1].name == "c"
