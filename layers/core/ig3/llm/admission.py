"""Admission in one Redis round trip: rpm/tpm limits for the key and its wallet, then the cache.

Limits — a sliding window counter (the weighted two-window estimate: the previous minute's
count scaled by how much of it still overlaps the window, plus the current minute's count).
O(1) memory per scope, atomic in Lua, exact enough for limits, and it yields an honest
``retry-after``: the time until the estimate drops under the limit. Each scope is one hash
(fields ``<window>:r`` requests and ``<window>:t`` tokens) so the script touches only declared
keys, and every key of a request carries the wallet as its hash tag (``{wallet}``): one slot,
so the script also runs on Redis Cluster / ElastiCache Serverless.

Tokens are reserved at admission (estimated prompt tokens + the requested output budget, as
OpenAI's limiter does) and corrected to the exact count after the response (write-behind
``HINCRBY`` on the same window field), so tpm converges on real usage.

Cache — an exact response cache keyed by a hash of the normalized request (kind, model,
every generation parameter; not ``stream``/``stream_options``/``user``), only for
deterministic requests: embeddings, ``temperature == 0``, or any request with a ``seed``
(OpenAI's default temperature is 1, so an absent temperature is not deterministic). Entries
are scoped per wallet: a shared cache would let one account learn, by timing, that another
asked the same thing; scoping also keeps the cache key in the wallet's hash slot, so the
lookup rides in the admission script. The script reads the cache only when the request is
admitted.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any

import orjson

WINDOW_MS = 60_000

ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local w = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local nscopes = tonumber(ARGV[3])
local idx = math.floor(now / w)
local elapsed = now - idx * w
local frac = elapsed / w
local cur_r, prev_r, cur_t, prev_t = idx .. ':r', (idx - 1) .. ':r', idx .. ':t', (idx - 1) .. ':t'
local function wait_ms(cur, prev, limit, c)
  if limit <= 0 then return 0 end
  if c > limit then return -1 end
  if prev * (1 - frac) + cur + c <= limit then return 0 end
  if cur + c > limit then
    -- only the next window helps: wait until this one's count has decayed enough
    return (w - elapsed) + math.ceil(w * (1 - (limit - c) / cur))
  end
  return math.ceil(w * (1 - frac - (limit - cur - c) / prev))
end
local worst, which = 0, ''
for i = 1, nscopes do
  local rpm, tpm = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  local v = redis.call('HMGET', KEYS[i], cur_r, prev_r, cur_t, prev_t)
  local a = wait_ms(tonumber(v[1]) or 0, tonumber(v[2]) or 0, rpm, 1)
  local b = wait_ms(tonumber(v[3]) or 0, tonumber(v[4]) or 0, tpm, cost)
  if a < 0 or b < 0 then return {0, -1, i .. (a < 0 and ':r' or ':t'), idx, false} end
  if a > worst then worst, which = a, i .. ':r' end
  if b > worst then worst, which = b, i .. ':t' end
end
if worst > 0 then return {0, worst, which, idx, false} end
for i = 1, nscopes do
  redis.call('HINCRBY', KEYS[i], cur_r, 1)
  redis.call('HINCRBY', KEYS[i], cur_t, cost)
  redis.call('HDEL', KEYS[i], (idx - 2) .. ':r', (idx - 2) .. ':t')
  redis.call('PEXPIRE', KEYS[i], 2 * w + 1000)
end
local cached = false
if #KEYS > nscopes then cached = redis.call('GET', KEYS[nscopes + 1]) end
return {1, 0, '', idx, cached}
"""


@dataclass(frozen=True)
class Scope:
    """One limited principal: its hash key and limits (0 = unlimited)."""

    key: str
    rpm: int
    tpm: int
    name: str  # "key" | "wallet", for the error message


@dataclass(frozen=True)
class Admission:
    allowed: bool
    retry_after_ms: int = 0
    limit: str = ""  # e.g. "key rpm"
    window: int = 0
    cached: bytes | None = None
    degraded: bool = False
    too_large: bool = False


def scope_keys(prefix: str, wallet: str, key_id: str | None) -> tuple[str, str]:
    tag = "{" + wallet + "}"
    return f"{prefix}rl:{tag}:key:{key_id or '-'}", f"{prefix}rl:{tag}:wallet"


def cache_key(prefix: str, wallet: str, kind: str, body: dict[str, Any]) -> str:
    return f"{prefix}c:{{{wallet}}}:{request_hash(kind, body)}"


_NOT_HASHED = frozenset({"stream", "stream_options", "user", "metadata", "store"})


def request_hash(kind: str, body: dict[str, Any]) -> str:
    norm = {k: v for k, v in body.items() if k not in _NOT_HASHED and v is not None}
    norm["__kind"] = kind
    return hashlib.sha256(orjson.dumps(norm, option=orjson.OPT_SORT_KEYS)).hexdigest()


def cacheable(kind: str, body: dict[str, Any]) -> bool:
    if kind == "embedding":
        return True
    if body.get("seed") is not None:
        return True
    temperature = body.get("temperature")
    return temperature is not None and float(temperature) == 0.0


def window_wait_ms(cur: float, prev: float, limit: int, cost: int, elapsed_ms: float, window_ms: int) -> int:
    """The Lua ``wait_ms`` in Python (the in-process fallback limiter uses it). -1: never fits."""
    if limit <= 0:
        return 0
    if cost > limit:
        return -1
    frac = elapsed_ms / window_ms
    if prev * (1 - frac) + cur + cost <= limit:
        return 0
    if cur + cost > limit:
        return int((window_ms - elapsed_ms) + math.ceil(window_ms * (1 - (limit - cost) / cur)))
    return int(math.ceil(window_ms * (1 - frac - (limit - cur - cost) / prev)))


class LocalLimiter:
    """The same sliding window in process memory: the limiter while Redis is unreachable."""

    MAX_SCOPES = 100_000

    def __init__(self, window_ms: int = WINDOW_MS, clock: Any = time.time):
        self.window_ms = window_ms
        self._clock = clock
        self._counts: dict[str, dict[str, float]] = {}

    def admit(self, scopes: list[Scope], cost: int) -> Admission:
        now = self._clock() * 1000.0
        idx = int(now // self.window_ms)
        elapsed = now - idx * self.window_ms
        if len(self._counts) > self.MAX_SCOPES:
            self._counts.clear()  # bounded memory during a long outage
        worst, which = 0, ""
        for s in scopes:
            h = self._counts.get(s.key, {})
            for field, limit, c in (("r", s.rpm, 1), ("t", s.tpm, cost)):
                wait = window_wait_ms(h.get(f"{idx}:{field}", 0), h.get(f"{idx - 1}:{field}", 0), limit, c,
                                      elapsed, self.window_ms)
                if wait < 0:
                    return Admission(False, 0, f"{s.name} {'rpm' if field == 'r' else 'tpm'}", idx, degraded=True,
                                     too_large=True)
                if wait > worst:
                    worst, which = wait, f"{s.name} {'rpm' if field == 'r' else 'tpm'}"
        if worst > 0:
            return Admission(False, worst, which, idx, degraded=True)
        for s in scopes:
            h = self._counts.setdefault(s.key, {})
            for f in [k for k in h if not k.startswith((f"{idx}:", f"{idx - 1}:"))]:
                del h[f]
            h[f"{idx}:r"] = h.get(f"{idx}:r", 0) + 1
            h[f"{idx}:t"] = h.get(f"{idx}:t", 0) + cost
        return Admission(True, window=idx, degraded=True)

    def correct(self, scopes: list[Scope], window: int, delta: int) -> None:
        for s in scopes:
            h = self._counts.get(s.key)
            if h is not None and f"{window}:t" in h:
                h[f"{window}:t"] += delta


def parse_admission(raw: list[Any], scopes: list[Scope]) -> Admission:
    allowed, wait, which, idx, cached = raw
    which = which.decode() if isinstance(which, bytes) else which
    label = ""
    if which:
        i, kind = which.split(":")
        label = f"{scopes[int(i) - 1].name} {'rpm' if kind == 'r' else 'tpm'}"
    if int(allowed) == 1:
        return Admission(True, window=int(idx), cached=cached or None)
    if int(wait) < 0:
        return Admission(False, 0, label, int(idx), too_large=True)
    return Admission(False, int(wait), label, int(idx))
