"""The lean pipelined Redis client against the real Redis: pipelined concurrency keeps replies
paired with their callers, error replies, timeouts fail the pending calls and drop the
connection, and the next call reconnects."""
from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from ig3.llm.resp import LeanRedis, RedisReplyError


def test_concurrent_calls_get_their_own_replies(redis_url, redis_prefix):
    async def go():
        r = LeanRedis(redis_url, timeout_s=1.0)
        await r.execute_many([("SET", f"{redis_prefix}k{i}", f"v{i}") for i in range(200)])
        got = await asyncio.gather(*(r.execute("GET", f"{redis_prefix}k{i}") for i in range(200)))
        with pytest.raises(RedisReplyError):
            await r.execute("NOT-A-COMMAND")
        mixed = await r.execute_many([("INCR", f"{redis_prefix}n"), ("HGET", f"{redis_prefix}k1", "x"),
                                      ("INCR", f"{redis_prefix}n")])
        connects = r.connects
        await r.aclose()
        return got, mixed, connects

    got, mixed, connects = asyncio.run(go())
    assert got == [f"v{i}".encode() for i in range(200)]
    assert mixed[0] == 1 and isinstance(mixed[1], RedisReplyError) and mixed[2] == 2  # WRONGTYPE in the middle
    assert connects == 1  # everything on one connection


def test_timeout_fails_pending_calls_then_reconnects(redis_url):
    # A server that accepts and never answers (a Redis that stopped responding).
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    held = []
    threading.Thread(target=lambda: held.append(silent.accept()), daemon=True).start()

    async def go():
        r = LeanRedis(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", timeout_s=0.1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        results = await asyncio.gather(r.execute("PING"), r.execute("PING"), return_exceptions=True)
        elapsed = loop.time() - t0
        # Point it at the real Redis: the dropped connection is replaced on the next call.
        from urllib.parse import urlparse

        u = urlparse(redis_url)
        r.host, r.port = u.hostname, u.port or 6379
        pong = await r.execute("PING")
        await r.aclose()
        return results, elapsed, pong, r.connects

    results, elapsed, pong, connects = asyncio.run(go())
    assert all(isinstance(x, TimeoutError) for x in results) and elapsed < 0.5
    assert pong == b"PONG" and connects == 2
    silent.close()


def test_url_forms():
    r = LeanRedis("unix:///tmp/x/redis.socket?db=3")
    assert r.unix_path == "/tmp/x/redis.socket" and r.db == 3
    r = LeanRedis("rediss://user:p%40ss@cache.example:6380/2")
    assert (r.host, r.port, r.tls, r.user, r.password, r.db) == ("cache.example", 6380, True, "user", "p@ss", 2)
    assert LeanRedis("redis://127.0.0.1:6379").db == 0
