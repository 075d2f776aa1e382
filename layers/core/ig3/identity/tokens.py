"""Short-lived access tokens: ES256 JWTs signed with keys kept in Secrets Manager.

Design decisions (RFC 8725, JWT BCP):
- One algorithm, ES256, on an explicit allow-list; the header must say exactly
  ``{"alg": "ES256", "typ": "at+jwt", "kid": ...}`` (RFC 9068 ``typ`` so an ID token or any
  other JWT signed elsewhere cannot be replayed as an access token). ``alg: none``, every HS*
  algorithm (the public-key-as-HMAC-secret confusion) and unknown ``kid`` values are rejected
  before any cryptography runs. ``iss``, ``aud``, ``exp``, ``nbf``, ``iat``, ``jti``, ``sub`` are
  required and checked.
- Verification is ~10 lines of ``cryptography`` instead of a generic JWT library: the hot
  path (every API request, in the authorizer and the LLM API) must stay near 0.1 ms, and a
  narrow verifier has fewer ways to be talked into something. Tests prove interoperability
  with PyJWT in both directions.
- Verified tokens are cached in-process by their exact text (bounded), so the ~80 µs ECDSA
  verification runs once per token per container, not once per request; expiry is re-checked
  on every hit. A cached entry can only ever be the same bytes that already verified.
- Key rotation: the secret holds ``{"current": {kid, private_key}, "previous": [{kid,
  private_key | public_key}, ...]}``. Tokens are signed with ``current``; any listed key
  verifies. Rotation (``rotate_secret``) moves current to the head of previous, keeping a few,
  so tokens issued before a rotation stay valid until they expire. An unknown ``kid`` triggers
  one rate-limited re-read of the secret (a rotation by another container).
"""
from __future__ import annotations

import base64
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from ig3.errors import Unauthorized

ALGORITHM = "ES256"
TOKEN_TYPE = "at+jwt"
ALLOWED_ALGORITHMS = frozenset({ALGORITHM})
PRINCIPAL_TYPES = frozenset({"wallet", "did", "device"})
MAX_TOKEN_CHARS = 4096
_ECDSA = ec.ECDSA(hashes.SHA256())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    if "=" in text:
        raise ValueError("padding is not allowed in JWS base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class SigningKey:
    kid: str
    public_key: ec.EllipticCurvePublicKey
    private_key: ec.EllipticCurvePrivateKey | None = None


@dataclass(frozen=True)
class KeySet:
    current: SigningKey
    verification: dict[str, ec.EllipticCurvePublicKey]


def _load_key(entry: dict[str, Any]) -> SigningKey:
    kid = entry["kid"]
    if entry.get("private_key"):
        priv = serialization.load_pem_private_key(entry["private_key"].encode(), password=None)
        if not isinstance(priv, ec.EllipticCurvePrivateKey) or priv.curve.name != "secp256r1":
            raise ValueError(f"key {kid}: ES256 needs a P-256 private key")
        return SigningKey(kid, priv.public_key(), priv)
    pub = serialization.load_pem_public_key(entry["public_key"].encode())
    if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
        raise ValueError(f"key {kid}: ES256 needs a P-256 public key")
    return SigningKey(kid, pub)


def parse_keyset(secret_string: str) -> KeySet:
    data = orjson.loads(secret_string)
    current = _load_key(data["current"])
    if current.private_key is None:
        raise ValueError("the current signing key must include its private key")
    verification = {current.kid: current.public_key}
    for entry in data.get("previous", []):
        verification.setdefault(entry["kid"], _load_key(entry).public_key)
    return KeySet(current, verification)


def new_key_entry() -> dict[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"kid": secrets.token_hex(8), "alg": ALGORITHM, "private_key": pem, "created_at": int(time.time())}


def rotated_secret(secret_string: str | None, keep_previous: int = 2) -> str:
    """A new secret value: a fresh current key; the old current heads the previous list."""
    previous: list[dict[str, Any]] = []
    if secret_string:
        old = orjson.loads(secret_string)
        previous = [old["current"], *old.get("previous", [])][:keep_previous]
    return orjson.dumps({"current": new_key_entry(), "previous": previous}).decode()


class SigningKeysMissing(RuntimeError):
    """The secret does not exist or holds no key set yet (nothing can have been signed with it)."""


class SecretsManagerKeySource:
    """Reads the key set from Secrets Manager, caches it, re-reads at most every ``min_refresh_s``.

    The first ``keyset(initialize=True)`` (the issuer's path) creates the secret, or fills one the
    infrastructure created with a placeholder value, with a fresh key set. Concurrent
    initializers write the same version (a ClientRequestToken derived from the placeholder's
    version), so they cannot end up signing with two different keys. Verification never writes.
    """

    def __init__(self, secret_id: str, client: Any | None = None, ttl_s: float = 300.0, min_refresh_s: float = 30.0):
        self._secret_id = secret_id
        self._client = client
        self._ttl = ttl_s
        self._min_refresh = min_refresh_s
        self._keys: KeySet | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("secretsmanager")
        return self._client

    def keyset(self, *, refresh: bool = False, initialize: bool = False) -> KeySet:
        now = time.monotonic()
        keys = self._keys
        if keys is not None and not refresh and now - self._loaded_at < self._ttl:
            return keys
        with self._lock:
            if self._keys is not None and now - self._loaded_at < (self._min_refresh if refresh else self._ttl):
                return self._keys
            self._keys, self._loaded_at = self._read(initialize), time.monotonic()
            return self._keys

    def _read(self, initialize: bool) -> KeySet:
        c = self.client
        try:
            resp = c.get_secret_value(SecretId=self._secret_id)
        except c.exceptions.ResourceNotFoundException:
            if not initialize:
                raise SigningKeysMissing(f"secret {self._secret_id} does not exist") from None
            ensure_signing_secret(self._secret_id, c)
            resp = c.get_secret_value(SecretId=self._secret_id)
        try:
            return parse_keyset(resp.get("SecretString") or "")
        except (ValueError, KeyError, TypeError):
            if not initialize:
                raise SigningKeysMissing(f"secret {self._secret_id} holds no key set") from None
        try:
            c.put_secret_value(SecretId=self._secret_id, SecretString=rotated_secret(None),
                               ClientRequestToken=f"ig3-init-{resp['VersionId']}"[:64])
        except c.exceptions.ResourceExistsException:
            pass  # another container initialized it first: read theirs
        return parse_keyset(c.get_secret_value(SecretId=self._secret_id)["SecretString"])


class StaticKeySource:
    def __init__(self, keyset: KeySet):
        self._keys = keyset

    def keyset(self, *, refresh: bool = False, initialize: bool = False) -> KeySet:
        return self._keys


def ensure_signing_secret(secret_id: str, client: Any | None = None) -> bool:
    """Create the signing-key secret if it does not exist (local cloud bootstrap). True if created."""
    if client is None:
        from ig3.aws import client as aws_client

        client = aws_client("secretsmanager")
    try:
        client.describe_secret(SecretId=secret_id)
        return False
    except client.exceptions.ResourceNotFoundException:
        pass
    try:
        client.create_secret(Name=secret_id, SecretString=rotated_secret(None),
                             Description="ig3 gateway JWT signing keys (ES256); rotate with ig3.identity.tokens.rotate_secret")
    except client.exceptions.ResourceExistsException:
        return False  # created concurrently by another process
    return True


def rotate_secret(secret_id: str, client: Any | None = None, keep_previous: int = 2) -> str:
    """Put a new current key (AWSCURRENT); returns the new kid."""
    if client is None:
        from ig3.aws import client as aws_client

        client = aws_client("secretsmanager")
    old = client.get_secret_value(SecretId=secret_id)["SecretString"]
    new = rotated_secret(old, keep_previous)
    client.put_secret_value(SecretId=secret_id, SecretString=new)
    return orjson.loads(new)["current"]["kid"]


@dataclass(frozen=True)
class AccessClaims:
    subject: str
    principal_type: str
    scopes: tuple[str, ...]
    tier: str
    expires_at: int
    token_id: str


class TokenService:
    """Issues and verifies access tokens for one issuer/audience."""

    def __init__(self, keys: Any, *, issuer: str, audience: str, ttl_s: int = 900, leeway_s: int = 30,
                 clock: Callable[[], float] = time.time, cache_size: int = 10_000):
        self._keys = keys  # SecretsManagerKeySource | StaticKeySource
        self.issuer = issuer
        self.audience = audience
        self.ttl_s = ttl_s
        self.leeway_s = leeway_s
        self._clock = clock
        self._cache: dict[str, AccessClaims] = {}
        self._cache_size = cache_size

    def issue(self, subject: str, principal_type: str, scopes: list[str] | tuple[str, ...], tier: str,
              ttl_s: int | None = None) -> tuple[str, int]:
        if principal_type not in PRINCIPAL_TYPES:
            raise ValueError(f"unknown principal type {principal_type}")
        key = self._keys.keyset(initialize=True).current
        now = int(self._clock())
        ttl = ttl_s or self.ttl_s
        header = {"alg": ALGORITHM, "typ": TOKEN_TYPE, "kid": key.kid}
        claims = {"iss": self.issuer, "aud": self.audience, "sub": subject, "iat": now, "nbf": now,
                  "exp": now + ttl, "jti": secrets.token_urlsafe(16), "ptype": principal_type,
                  "scope": " ".join(scopes), "tier": tier}
        signing_input = b64url(orjson.dumps(header)) + "." + b64url(orjson.dumps(claims))
        assert key.private_key is not None
        r, s = decode_dss_signature(key.private_key.sign(signing_input.encode(), _ECDSA))
        return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big")), ttl

    def verify(self, token: str) -> AccessClaims:
        now = self._clock()
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires_at + self.leeway_s <= now:
                raise Unauthorized("access token has expired: sign in again", code="token_expired")
            return cached
        claims = self._verify_uncached(token, now)
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))  # oldest insertion first
        self._cache[token] = claims
        return claims

    def _verify_uncached(self, token: str, now: float) -> AccessClaims:
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise Unauthorized("malformed access token", code="invalid_token")
        header_b64, payload_b64, sig_b64 = token.split(".")
        try:
            header = orjson.loads(b64url_decode(header_b64))
        except (ValueError, orjson.JSONDecodeError):
            raise Unauthorized("malformed access token header", code="invalid_token") from None
        if not isinstance(header, dict):
            raise Unauthorized("malformed access token header", code="invalid_token")
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise Unauthorized(f"token algorithm {str(alg)[:16]!r} is not accepted (only {ALGORITHM})",
                               code="invalid_token")
        if header.get("typ") != TOKEN_TYPE or set(header) - {"alg", "typ", "kid"}:
            raise Unauthorized("token is not an ig3 access token (typ / header)", code="invalid_token")
        kid = header.get("kid")
        try:
            public = self._keys.keyset().verification.get(kid) if isinstance(kid, str) else None
            if public is None and isinstance(kid, str):
                public = self._keys.keyset(refresh=True).verification.get(kid)
        except SigningKeysMissing:
            public = None
        if public is None:
            raise Unauthorized("token signed with an unknown key", code="invalid_token")
        try:
            sig = b64url_decode(sig_b64)
        except ValueError:
            raise Unauthorized("malformed token signature", code="invalid_token") from None
        if len(sig) != 64:
            raise Unauthorized("malformed token signature", code="invalid_token")
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        try:
            public.verify(der, (header_b64 + "." + payload_b64).encode(), _ECDSA)
        except InvalidSignature:
            raise Unauthorized("token signature is invalid", code="invalid_token") from None
        try:
            c = orjson.loads(b64url_decode(payload_b64))
        except (ValueError, orjson.JSONDecodeError):
            raise Unauthorized("malformed token claims", code="invalid_token") from None
        return self._check_claims(c, now)

    def _check_claims(self, c: Any, now: float) -> AccessClaims:
        if not isinstance(c, dict):
            raise Unauthorized("malformed token claims", code="invalid_token")
        for name, kind in (("iss", str), ("sub", str), ("jti", str), ("ptype", str), ("exp", int), ("iat", int),
                           ("nbf", int)):
            if not isinstance(c.get(name), kind) or isinstance(c.get(name), bool):
                raise Unauthorized(f"token claim '{name}' missing or invalid", code="invalid_token")
        if c["iss"] != self.issuer:
            raise Unauthorized("token issued by another issuer", code="invalid_token")
        aud = c.get("aud")
        if not (aud == self.audience or (isinstance(aud, list) and self.audience in aud)):
            raise Unauthorized("token is for another audience", code="invalid_token")
        if c["exp"] + self.leeway_s <= now:
            raise Unauthorized("access token has expired: sign in again", code="token_expired")
        if c["nbf"] - self.leeway_s > now or c["iat"] - self.leeway_s > now:
            raise Unauthorized("access token is not valid yet", code="invalid_token")
        if c["ptype"] not in PRINCIPAL_TYPES:
            raise Unauthorized("token has an unknown principal type", code="invalid_token")
        scope = c.get("scope", "")
        tier = c.get("tier", "standard")
        if not isinstance(scope, str) or not isinstance(tier, str):
            raise Unauthorized("token claim 'scope' or 'tier' invalid", code="invalid_token")
        return AccessClaims(subject=c["sub"], principal_type=c["ptype"], scopes=tuple(scope.split()), tier=tier,
                            expires_at=c["exp"], token_id=c["jti"])
