"""Single-use login nonces: the port, a Redis adapter and an in-memory one for unit tests.

A nonce is issued with a TTL and consumed with one atomic ``GETDEL``: of two concurrent
logins presenting the same nonce exactly one gets its value back, so a replay can never win.
The stored value binds the nonce to what it was issued for (a DID for DID login), so a nonce
issued for one DID cannot be spent by another.
"""
from __future__ import annotations

import secrets
import string
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Protocol

from ig3.errors import Unavailable

# EIP-4361: nonce = 8*( ALPHA / DIGIT ). 22 base-62 characters carry ~131 bits.
_ALPHABET = string.ascii_letters + string.digits
NONCE_LENGTH = 22


def new_nonce() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(NONCE_LENGTH))


class NonceStore(Protocol):
    def issue(self, purpose: str, bound_to: str, ttl_s: int) -> str: ...

    def consume(self, purpose: str, nonce: str) -> str | None:
        """The value it was bound to, once; None if unknown, expired or already spent."""

    def peek(self, purpose: str, nonce: str) -> str | None:
        """The bound value without spending the nonce (to verify before consuming)."""


@contextmanager
def _redis_errors() -> Iterator[None]:
    # Without the nonce store no login can be checked: a clear 503, never a 500 or a pass.
    from redis.exceptions import RedisError

    try:
        yield
    except RedisError:
        raise Unavailable("sign-in is temporarily unavailable; try again shortly", code="nonce_store_unavailable",
                          headers={"Retry-After": "5"}) from None


class RedisNonceStore:
    def __init__(self, client: Any, prefix: str = "ig3:nonce:"):
        self._redis = client
        self._prefix = prefix

    def _key(self, purpose: str, nonce: str) -> str:
        return f"{self._prefix}{purpose}:{nonce}"

    def issue(self, purpose: str, bound_to: str, ttl_s: int) -> str:
        while True:
            nonce = new_nonce()
            with _redis_errors():
                if self._redis.set(self._key(purpose, nonce), bound_to or "-", ex=ttl_s, nx=True):
                    return nonce

    def consume(self, purpose: str, nonce: str) -> str | None:
        if not nonce or len(nonce) > 128:
            return None
        with _redis_errors():
            return self._decode(self._redis.getdel(self._key(purpose, nonce)))

    def peek(self, purpose: str, nonce: str) -> str | None:
        if not nonce or len(nonce) > 128:
            return None
        with _redis_errors():
            return self._decode(self._redis.get(self._key(purpose, nonce)))

    @staticmethod
    def _decode(raw: object) -> str | None:
        if raw is None:
            return None
        value = raw.decode() if isinstance(raw, bytes) else str(raw)
        return "" if value == "-" else value


class MemoryNonceStore:
    """Same semantics in one process (unit tests)."""

    def __init__(self, clock=time.monotonic):
        self._items: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def issue(self, purpose: str, bound_to: str, ttl_s: int) -> str:
        nonce = new_nonce()
        with self._lock:
            self._items[(purpose, nonce)] = (bound_to, self._clock() + ttl_s)
        return nonce

    def consume(self, purpose: str, nonce: str) -> str | None:
        with self._lock:
            item = self._items.pop((purpose, nonce), None)
        if item is None or item[1] <= self._clock():
            return None
        return item[0]

    def peek(self, purpose: str, nonce: str) -> str | None:
        item = self._items.get((purpose, nonce))
        if item is None or item[1] <= self._clock():
            return None
        return item[0]
