"""Identity settings from the environment (same names locally and in AWS).

- ``IG3_PUBLIC_HOST``: the gateway's public authority (``api.example.com``; locally
  ``127.0.0.1:PORT``). SIWE messages must name it as their domain and as their URI's authority.
- ``IG3_SIWE_CHAIN_IDS``: chains a wallet may sign in from (default Ethereum 1, peaq 3338,
  krest 2241, agung 9990).
- ``IG3_EVM_RPC_URLS``: ``chain=url,...`` — enables EIP-1271 contract-wallet signatures on those chains.
- ``IG3_JWT_SECRET_ID``: the Secrets Manager secret holding the ES256 signing keys.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

JWT_SECRET_ENV = "IG3_JWT_SECRET_ID"
PUBLIC_HOST_ENV = "IG3_PUBLIC_HOST"


@dataclass(frozen=True)
class IdentitySettings:
    public_host: str
    siwe_chain_ids: frozenset[int]
    clock_skew_s: int  # tolerated clock difference for issued-at / not-before / expiry
    nonce_ttl_s: int  # single-use login nonces live this long
    rpc_urls: dict[int, str]
    jwt_secret_id: str
    jwt_issuer: str
    jwt_audience: str
    jwt_ttl_s: int
    default_tier: str
    apikey_local_ttl_s: float  # in-process API key cache: bounds how late a revocation is seen
    apikey_redis_ttl_s: int
    redis_prefix: str  # nonces and the API-key cache live under this prefix

    @property
    def is_local(self) -> bool:
        host = self.public_host.rsplit(":", 1)[0]
        return host in ("127.0.0.1", "localhost", "[::1]")


def _chain_ids(raw: str) -> frozenset[int]:
    return frozenset(int(x) for x in raw.replace(" ", "").split(",") if x)


def _rpc_urls(raw: str) -> dict[int, str]:
    out = {}
    for part in raw.split(","):
        if "=" in part:
            chain, url = part.split("=", 1)
            out[int(chain.strip())] = url.strip()
    return out


def default_public_host() -> str:
    return os.environ.get(PUBLIC_HOST_ENV) or f"127.0.0.1:{os.environ.get('IG3_PORT', '8080')}"


def load_settings() -> IdentitySettings:
    env = os.environ.get
    host = default_public_host()
    return IdentitySettings(
        public_host=host,
        siwe_chain_ids=_chain_ids(env("IG3_SIWE_CHAIN_IDS", "1,3338,2241,9990")),
        clock_skew_s=int(env("IG3_AUTH_CLOCK_SKEW_S", "60")),
        nonce_ttl_s=int(env("IG3_AUTH_NONCE_TTL_S", "300")),
        rpc_urls=_rpc_urls(env("IG3_EVM_RPC_URLS", "")),
        jwt_secret_id=env(JWT_SECRET_ENV, "ig3/jwt-signing-keys"),
        jwt_issuer=env("IG3_JWT_ISSUER", f"https://{host}"),
        jwt_audience=env("IG3_JWT_AUDIENCE", "ig3-api"),
        jwt_ttl_s=int(env("IG3_JWT_TTL_S", "900")),
        default_tier=env("IG3_DEFAULT_TIER", "standard"),
        apikey_local_ttl_s=float(env("IG3_APIKEY_LOCAL_TTL_S", "5")),
        apikey_redis_ttl_s=int(env("IG3_APIKEY_REDIS_TTL_S", "60")),
        redis_prefix=env("IG3_IDENTITY_REDIS_PREFIX", "ig3:"),
    )

