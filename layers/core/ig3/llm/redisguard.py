"""Redis on the request path, never blocking on a dead Redis.

Degrade policy (the documented contract of the llm function):
- Every hot-path Redis call has a short socket timeout (``IG3_LLM_REDIS_TIMEOUT_MS``, 50 ms) and
  no client retries; a failure counts against a circuit breaker.
- After ``failures_to_open`` consecutive failures the breaker opens for ``open_s`` seconds:
  requests skip Redis entirely (no connect attempts, zero added latency), then one probe
  request is let through (half-open); its success closes the breaker.
- While Redis is out: the response cache is bypassed (a miss, nothing stored); rate limits fail
  over to an in-process sliding window with the same limits (so one instance still enforces
  them; across N instances a client could get up to N x its limit for the outage — availability
  over strictness, bounded); responses carry ``x-ig3-degraded: redis``. Write-behind work
  (cache fills, token corrections) is dropped, never queued without bound.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ig3.log import logger

T = TypeVar("T")


class CircuitBreaker:
    def __init__(self, failures_to_open: int = 2, open_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.failures_to_open = failures_to_open
        self.open_s = open_s
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._failures >= self.failures_to_open and (self._probing or self._clock() < self._open_until)

    def allow(self) -> bool:
        if self._failures < self.failures_to_open:
            return True
        if self._clock() < self._open_until or self._probing:
            return False
        self._probing = True  # half-open: exactly one probe at a time
        return True

    def success(self) -> None:
        if self._failures >= self.failures_to_open:
            logger.info("redis circuit closed")
        self._failures = 0
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        self._probing = False
        if self._failures >= self.failures_to_open:
            if self._clock() >= self._open_until:
                logger.warning("redis circuit open", extra={"open_s": self.open_s})
            self._open_until = self._clock() + self.open_s


class RedisUnavailable(Exception):
    """Redis is out (breaker open, timeout, refused); the caller takes its degrade path."""


class RedisGuard:
    """The lean pipelined client (``ig3.llm.resp``) behind the circuit breaker, with a batched
    write-behind queue."""

    MAX_PENDING_WRITES = 10_000
    WRITE_BEHIND_DELAY_S = 0.01

    def __init__(self, url: str, *, timeout_s: float = 0.05, breaker: CircuitBreaker | None = None,
                 client: Any | None = None):
        if client is None:
            from ig3.llm.resp import LeanRedis

            client = LeanRedis(url, timeout_s=timeout_s)
        self.client = client
        self.breaker = breaker or CircuitBreaker()
        self._writes: list[tuple[Any, ...]] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task | None = None
        self._scripts: dict[str, str] = {}  # source -> sha

    @property
    def degraded(self) -> bool:
        return self.breaker.is_open

    async def call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        if not self.breaker.allow():
            raise RedisUnavailable("circuit open")
        try:
            result = await fn(self.client)
        except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
            self.breaker.failure()
            raise RedisUnavailable(type(exc).__name__) from None
        except Exception as exc:  # redis.exceptions.ConnectionError/TimeoutError and friends
            if _is_redis_outage(exc):
                self.breaker.failure()
                raise RedisUnavailable(type(exc).__name__) from None
            raise
        self.breaker.success()
        return result

    async def eval_script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA with one reload on NOSCRIPT (a restarted or failed-over Redis)."""
        async def run(r: Any) -> Any:
            sha = self._scripts.get(source)
            if sha is None:
                sha = self._scripts[source] = await r.script_load(source)
            try:
                return await r.evalsha(sha, len(keys), *keys, *args)
            except Exception as exc:
                if "NOSCRIPT" not in str(exc):
                    raise
                self._scripts[source] = await r.script_load(source)
                return await r.evalsha(self._scripts[source], len(keys), *keys, *args)

        return await self.call(run)

    # -- write-behind: fills and corrections batched into one pipeline per loop turn -------------
    def write_behind(self, *command: Any) -> None:
        if self.breaker.is_open or len(self._writes) >= self.MAX_PENDING_WRITES:
            return
        self._writes.append(command)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            # Gather a few milliseconds of writes into one pipeline: one round trip for many requests.
            await asyncio.sleep(self.WRITE_BEHIND_DELAY_S)
            self._wake.clear()
            batch, self._writes = self._writes, []
            if not batch:
                continue

            async def run(r: Any) -> None:
                await r.execute_many(batch)

            try:
                await self.call(run)
            except RedisUnavailable:
                pass  # dropped by policy: a dead Redis must not grow our memory

    async def drain(self, timeout_s: float = 1.0) -> None:
        """Wait for pending writes (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while (self._writes or self._wake.is_set()) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0)

    async def close(self) -> None:
        if self._flusher:
            self._flusher.cancel()
        try:
            await self.client.aclose()
        except Exception:  # noqa: BLE001 — closing a dead connection
            pass


def _is_redis_outage(exc: Exception) -> bool:
    # LOADING / MASTERDOWN / TRYAGAIN replies: the server is there but cannot serve right now.
    text = str(exc)
    return text.startswith(("LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"))
