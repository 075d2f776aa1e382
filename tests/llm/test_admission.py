"""Sliding-window limits and the cache read, in one Lua script on the real Redis; the in-process
fallback limiter; the circuit breaker."""
from __future__ import annotations

import asyncio

import pytest

from ig3.llm.admission import (ADMIT_LUA, LocalLimiter, Scope, cache_key, cacheable, parse_admission,
                               request_hash, scope_keys, window_wait_ms)
from ig3.llm.redisguard import CircuitBreaker, RedisGuard, RedisUnavailable


def test_request_hash_normalization():
    a = {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0, "stream": True, "user": "u1"}
    b = {"temperature": 0, "messages": [{"role": "user", "content": "x"}], "model": "m", "stream": False}
    assert request_hash("chat", a) == request_hash("chat", b)
    assert request_hash("chat", a) != request_hash("completion", a)
    assert request_hash("chat", a) != request_hash("chat", {**a, "max_tokens": 5})
    assert cacheable("chat", {"temperature": 0}) and cacheable("chat", {"temperature": 1, "seed": 3})
    assert not cacheable("chat", {}) and not cacheable("chat", {"temperature": 0.2}) and cacheable("embedding", {})
    assert cache_key("p:", "0xabc", "chat", a).startswith("p:c:{0xabc}:")


def test_window_wait_math():
    w = 60_000
    assert window_wait_ms(0, 0, 10, 1, 0, w) == 0
    assert window_wait_ms(10, 0, 10, 1, 30_000, w) > 30_000  # only the next window helps
    wait = window_wait_ms(0, 10, 10, 1, 30_000, w)  # prev 10 weighted 0.5 = 5, +1 fits
    assert wait == 0
    wait = window_wait_ms(5, 10, 10, 1, 30_000, w)  # 5 + 5 + 1 > 10: wait until prev decays by 1
    assert wait == pytest.approx(6_000, abs=1)
    assert window_wait_ms(0, 0, 10, 11, 0, w) == -1


def test_local_limiter_enforces_and_recovers():
    now = [1_000_000.0]
    lim = LocalLimiter(clock=lambda: now[0])
    s = [Scope("k", rpm=2, tpm=0, name="key")]
    assert lim.admit(s, 1).allowed and lim.admit(s, 1).allowed
    denied = lim.admit(s, 1)
    assert not denied.allowed and denied.limit == "key rpm" and denied.retry_after_ms > 0
    now[0] += denied.retry_after_ms / 1000 + 0.001
    assert lim.admit(s, 1).allowed


@pytest.fixture
def guard(redis_url):
    loop = asyncio.new_event_loop()
    g = RedisGuard(redis_url, timeout_s=0.5)
    yield g, loop
    loop.run_until_complete(g.close())
    loop.close()


def test_lua_admission_limits_retry_after_and_cache(guard, redis_prefix, redis_url):
    g, loop = guard
    key_scope, wallet_scope = scope_keys(redis_prefix, "0xw", "k1")
    scopes = [Scope(key_scope, rpm=3, tpm=1000, name="key"), Scope(wallet_scope, rpm=5, tpm=0, name="wallet")]
    ck = cache_key(redis_prefix, "0xw", "chat", {"model": "m"})

    def admit(cost: int, with_cache: bool = False):
        keys = [s.key for s in scopes] + ([ck] if with_cache else [])
        args = [60_000, cost, 2, 3, 1000, 5, 0]
        return parse_admission(loop.run_until_complete(g.eval_script(ADMIT_LUA, keys, args)), scopes)

    import redis as redis_lib

    r = redis_lib.Redis.from_url(redis_url)
    first = admit(100, with_cache=True)
    assert first.allowed and first.cached is None and first.window > 0
    r.set(ck, b"cached-body", px=10_000)
    assert admit(100, with_cache=True).cached == b"cached-body"
    third = admit(100)
    assert third.allowed
    denied = admit(100)
    assert not denied.allowed and denied.limit == "key rpm"
    assert 0 < denied.retry_after_ms <= 120_000
    # Refused requests are not counted: the wallet saw exactly 3.
    h = r.hgetall(wallet_scope)
    assert int(h[f"{first.window}:r".encode()]) == 3 and int(h[f"{first.window}:t".encode()]) == 300
    # tpm: a reservation bigger than the whole limit can never fit.
    scopes[0] = Scope(key_scope, rpm=0, tpm=1000, name="key")
    assert admit(5000).too_large


def test_breaker_opens_skips_and_probes(redis_url):
    clock = [0.0]
    b = CircuitBreaker(failures_to_open=2, open_s=5, clock=lambda: clock[0])
    loop = asyncio.new_event_loop()
    g = RedisGuard("redis://127.0.0.1:1/0", timeout_s=0.05, breaker=b)  # nothing listens on port 1
    try:
        for _ in range(2):
            with pytest.raises(RedisUnavailable):
                loop.run_until_complete(g.call(lambda r: r.execute("PING")))
        assert b.is_open and not b.allow()
        clock[0] = 6.0
        assert b.allow() and not b.allow()  # exactly one probe when half-open
        b.success()
        assert not b.is_open and b.allow()
    finally:
        loop.run_until_complete(g.close())
        loop.close()
