"""Wiring from the environment: one instance of each identity service per process.

Kept apart from the logic modules so they stay testable with injected ports; Lambda
containers and the local cloud call these factories and reuse the result across requests.
``reset()`` forgets them (tests that change the environment).
"""
from __future__ import annotations

import threading
from typing import Any

from ig3.identity.settings import load_settings

_lock = threading.RLock()
_cache: dict[str, Any] = {}


def _once(name: str, build):
    with _lock:
        if name not in _cache:
            _cache[name] = build()
        return _cache[name]


def reset() -> None:
    import ig3.identity

    with _lock:
        _cache.clear()
        ig3.identity._authorizer = None


def settings():
    return _once("settings", load_settings)


def token_service():
    from ig3.identity.tokens import SecretsManagerKeySource, TokenService

    s = settings()
    return _once("tokens", lambda: TokenService(SecretsManagerKeySource(s.jwt_secret_id), issuer=s.jwt_issuer,
                                                audience=s.jwt_audience, ttl_s=s.jwt_ttl_s))


def _redis():
    from ig3.redis_client import get_redis

    return get_redis()


def api_key_service():
    from ig3.config import table_name
    from ig3.identity.apikeys import ApiKeyService, DynamoApiKeyStore

    s = settings()
    return _once("apikeys", lambda: ApiKeyService(DynamoApiKeyStore(table_name("api_keys")), redis=_redis(),
                                                  redis_prefix=s.redis_prefix + "apikey:",
                                                  local_ttl_s=s.apikey_local_ttl_s, redis_ttl_s=s.apikey_redis_ttl_s,
                                                  default_tier=s.default_tier))


def nonce_store():
    from ig3.identity.nonces import RedisNonceStore

    return _once("nonces", lambda: RedisNonceStore(_redis(), prefix=settings().redis_prefix + "nonce:"))


def siwe_verifier():
    from ig3.identity.wallet_login import RpcEip1271Checker, SiweRules, SiweVerifier

    s = settings()
    return _once("siwe", lambda: SiweVerifier(
        SiweRules(domain=s.public_host, allowed_chain_ids=s.siwe_chain_ids, clock_skew_s=s.clock_skew_s,
                  max_age_s=s.nonce_ttl_s + 2 * s.clock_skew_s, require_https=not s.is_local),
        nonce_store(), contract_checker=RpcEip1271Checker(s.rpc_urls) if s.rpc_urls else None))


def authorizer():
    from ig3.identity.authorizer import Authorizer

    return _once("authorizer", lambda: Authorizer(token_service(), api_key_service()))


def did_login():
    from ig3.config import table_name
    from ig3.did.resolvers import configured_chain_id, resolver_from_env
    from ig3.identity.did_login import DidLogin, DynamoDeviceDirectory

    s = settings()
    return _once("did_login", lambda: DidLogin(domain=s.public_host, chain_id=configured_chain_id(),
                                               nonces=nonce_store(), resolver=resolver_from_env,
                                               device_of=DynamoDeviceDirectory(table_name("devices")),
                                               ttl_s=s.nonce_ttl_s))
