"""Cloud spend: reserve a request's worst-case cost in Redis before the upstream call, settle after.

Why a lease, not a Redis copy of the balance: the balance lives in DynamoDB (``ig3.billing``),
and other paths hold against it there (the AI gateway's tasks, the edge route of this gateway,
via ``BillingService.hold``). A balance mirrored into Redis would not see those holds, and the
two paths together could spend more than the wallet has. So the gateway takes a **lease**: an
ordinary ``BillingService.hold`` (same guard, same per-key budget, same expiry) for several
requests' worth of money, and then reserves each request inside it with one Lua script — one
Redis round trip per request, DynamoDB once per lease instead of once per request
(ARCHITECTURE §2: "reserve in Redis and settle to DynamoDB in batches").

Per (wallet, API key) one Redis hash, ``<prefix>bill:{wallet}:k:<key>`` (the wallet is the hash
tag, like the rate-limit keys, so every script touches one slot), holds the current lease:
``cur`` (its hold id), ``left`` (not yet reserved), ``until`` (no new reservations after this,
so none can outlive the lease's TTL), ``t`` (last use), and per lease ``a:<id>`` (amount),
``o:<id>`` (reservations outstanding), ``c:<id>`` (charged so far). Each request's reservation
is its own key ``<prefix>bill:{wallet}:h:<request>`` = ``<lease>|<amount>`` with a TTL.

- reserve: ``left >= amount`` (lease current and in its window) -> ``left -= amount``. Else
  this process acquires a new lease (one acquisition per scope at a time) and the install
  script reserves the request inside it atomically, retiring the old lease. If the wallet
  cannot fund ``lease_factor`` requests it leases exactly one; if not even that, the current
  lease is retired (its unreserved money freed) and one more try is made; then 402.
- settle: charge = min(actual, reserved); ``left += reserved - charge`` on the current lease.
- shrinking (``BillingService.shrink_lease``, idempotent per token): a retired lease frees its
  unreserved part at once and, when its last reservation settles, exactly ``amount - charged -
  freed so far``, leaving in DynamoDB only the charges still on their way to the ledger. A
  current lease idle for ``idle_close_s`` with nothing outstanding is freed the same way.
- the charge reaches the ledger through the usage event (``lease``, ``reserved`` in its
  detail): the billing function draws it from the lease (``BillingService.settle``), exactly
  once per request id.

Nothing leaks: a failed request settles with charge 0 (``finally``); a reservation whose
process died expires with its key's TTL and keeps its lease from closing early, so the lease
(a DynamoDB hold with a TTL) is freed by the billing sweep. Money is never created: Redis only
hands out what a DynamoDB hold already reserved, charges never exceed a reservation, and a
close frees at most what DynamoDB still holds (its condition).

Redis out: the request is held directly in DynamoDB under its own id (what the edge path
does); its usage event settles or releases that hold as usual.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ig3.errors import BadRequest, DomainError, PaymentRequired, Unavailable
from ig3.log import logger
from ig3.llm.redisguard import RedisGuard, RedisUnavailable

MAX_EXACT = 2**53 - 1  # Lua numbers are doubles: every amount stays an exact integer below this

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: scope, hold. ARGV: amount, hold_ttl_ms, scope_ttl_ms. -> {1, lease} | {0, ''}
RESERVE_LUA = _NOW + """
local held = redis.call('GET', KEYS[2])
if held then return {1, string.sub(held, 1, string.find(held, '|', 1, true) - 1)} end
local amount = tonumber(ARGV[1])
local v = redis.call('HMGET', KEYS[1], 'cur', 'left', 'until')
local cur = v[1]
if cur and now < (tonumber(v[3]) or 0) and (tonumber(v[2]) or 0) >= amount then
  redis.call('HINCRBY', KEYS[1], 'left', string.format('%d', -amount))
  redis.call('HINCRBY', KEYS[1], 'o:' .. cur, 1)
  redis.call('HSET', KEYS[1], 't', string.format('%d', now))
  redis.call('SET', KEYS[2], cur .. '|' .. ARGV[1], 'PX', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1, cur}
end
return {0, ''}
"""

# Retire the current lease (no new reservations in it). Its unreserved part is freed now; the
# rest when its last reservation settles, or all of it at once if none is outstanding.
# Sets shrink_id/shrink_amt: what BillingService.shrink_lease must free.
_RETIRE = """
local shrink_id, shrink_amt = '', 0
local old = redis.call('HGET', KEYS[1], 'cur')
if old then
  local v = redis.call('HMGET', KEYS[1], 'a:' .. old, 'o:' .. old, 'c:' .. old, 's:' .. old, 'left')
  shrink_id = old
  if (tonumber(v[2]) or 0) <= 0 then
    shrink_amt = (tonumber(v[1]) or 0) - (tonumber(v[3]) or 0) - (tonumber(v[4]) or 0)
    redis.call('HDEL', KEYS[1], 'a:' .. old, 'o:' .. old, 'c:' .. old, 's:' .. old)
  else
    shrink_amt = tonumber(v[5]) or 0
    redis.call('HINCRBY', KEYS[1], 's:' .. old, string.format('%d', shrink_amt))
  end
  redis.call('HDEL', KEYS[1], 'cur', 'left', 'until', 't')
end
"""

# KEYS: scope. -> {lease to shrink or '', amount}
RETIRE_LUA = _RETIRE + """
return {shrink_id, shrink_amt}
"""

# KEYS: scope, hold. ARGV: lease, lease amount, amount, use_ms, hold_ttl_ms, scope_ttl_ms.
# -> {retired lease to shrink or '', amount}
INSTALL_LUA = _NOW + _RETIRE + """
local lease, total, amount = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'cur', lease, 'left', string.format('%d', total - amount),
  'until', string.format('%d', now + tonumber(ARGV[4])), 't', string.format('%d', now),
  'a:' .. lease, ARGV[2], 'o:' .. lease, '1', 'c:' .. lease, '0')
redis.call('SET', KEYS[2], lease .. '|' .. ARGV[3], 'PX', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {shrink_id, shrink_amt}
"""

# KEYS: scope, hold. ARGV: actual charge. -> {found, charge, lease to shrink or '', amount}
SETTLE_LUA = _NOW + """
local h = redis.call('GET', KEYS[2])
if not h then return {0, 0, '', 0} end
redis.call('DEL', KEYS[2])
local sep = string.find(h, '|', 1, true)
local lease, amount = string.sub(h, 1, sep - 1), tonumber(string.sub(h, sep + 1))
local charge = math.min(tonumber(ARGV[1]), amount)
if redis.call('HEXISTS', KEYS[1], 'a:' .. lease) == 0 then return {1, charge, '', 0} end
local o = redis.call('HINCRBY', KEYS[1], 'o:' .. lease, -1)
redis.call('HINCRBY', KEYS[1], 'c:' .. lease, string.format('%d', charge))
if redis.call('HGET', KEYS[1], 'cur') == lease then
  redis.call('HINCRBY', KEYS[1], 'left', string.format('%d', amount - charge))
  redis.call('HSET', KEYS[1], 't', string.format('%d', now))
  return {1, charge, '', 0}
end
if o <= 0 then
  local v = redis.call('HMGET', KEYS[1], 'a:' .. lease, 'c:' .. lease, 's:' .. lease)
  redis.call('HDEL', KEYS[1], 'a:' .. lease, 'o:' .. lease, 'c:' .. lease, 's:' .. lease)
  return {1, charge, lease, tonumber(v[1]) - tonumber(v[2]) - (tonumber(v[3]) or 0)}
end
return {1, charge, '', 0}
"""

# KEYS: scope. ARGV: idle_ms. Closes the current lease when nothing is outstanding and it sat idle.
IDLE_LUA = _NOW + """
local v = redis.call('HMGET', KEYS[1], 'cur', 't')
local cur = v[1]
if not cur then return {'', -1} end
local w = redis.call('HMGET', KEYS[1], 'a:' .. cur, 'o:' .. cur, 'c:' .. cur, 's:' .. cur)
if (tonumber(w[2]) or 0) > 0 or now - (tonumber(v[2]) or 0) < tonumber(ARGV[1]) then return {'', 0} end
redis.call('HDEL', KEYS[1], 'cur', 'left', 'until', 't', 'a:' .. cur, 'o:' .. cur, 'c:' .. cur, 's:' .. cur)
return {cur, (tonumber(w[1]) or 0) - (tonumber(w[3]) or 0) - (tonumber(w[4]) or 0)}
"""


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass
class Reservation:
    """One request's reserved worst case. ``lease`` None: held directly in DynamoDB (Redis out)."""

    request_id: str
    account: str
    amount: int
    scope_key: str
    hold_key: str
    lease: str | None
    settled: bool = False

    def event_fields(self) -> dict[str, Any]:
        """What the usage event carries so that billing draws the charge from the lease."""
        return {"lease": self.lease, "reserved": self.amount} if self.lease else {}


class CloudSpend:
    def __init__(self, billing: Any, redis: RedisGuard, *, prefix: str = "ig3:llm:", lease_factor: int = 8,
                 lease_max: int = 50_000_000, use_s: float = 60.0, hold_ttl_s: float = 900.0,
                 idle_close_s: float = 10.0, default_output_tokens: int = 4096):
        self.billing = billing  # ig3.billing.service.BillingService (blocking: called in a thread)
        self.redis = redis
        self.prefix = prefix
        self.lease_factor = max(1, lease_factor)
        self.lease_max = lease_max
        self.use_ms = int(use_s * 1000)
        self.hold_ttl_ms = int(hold_ttl_s * 1000)
        # A lease outlives every reservation made in it: its use window plus a reservation's TTL.
        self.lease_ttl_s = use_s + hold_ttl_s + 60
        self.scope_ttl_ms = int(self.lease_ttl_s * 1000)
        self.idle_close_ms = int(idle_close_s * 1000)
        self.default_output_tokens = default_output_tokens
        self._locks: dict[str, asyncio.Lock] = {}
        self._scopes: dict[str, float] = {}  # scope key -> last use here (monotonic): the idle closer's list
        self._tasks: set[asyncio.Task] = set()
        self._idle_task: asyncio.Task | None = None
        self.leases_acquired = 0
        self.lease_shrinks = 0

    @classmethod
    def from_env(cls, billing: Any, redis: RedisGuard, prefix: str) -> CloudSpend:
        import os

        e = os.environ.get
        return cls(billing, redis, prefix=prefix, lease_factor=int(e("IG3_LLM_LEASE_FACTOR", "8")),
                   lease_max=int(e("IG3_LLM_LEASE_MAX", "50000000")),
                   use_s=float(e("IG3_LLM_LEASE_USE_S", "60")), hold_ttl_s=float(e("IG3_LLM_HOLD_TTL_S", "900")),
                   idle_close_s=float(e("IG3_LLM_LEASE_IDLE_S", "10")),
                   default_output_tokens=int(e("IG3_LLM_HOLD_DEFAULT_TOKENS", "4096")))

    # -- pricing (the billing function prices the usage event with the same book) ---------------
    def estimate(self, model: str, kind: str, prompt_tokens: int, max_output_tokens: int) -> int:
        amount = self.billing.estimate(model, "cloud", kind, prompt_tokens, max_output_tokens)
        if amount > MAX_EXACT:
            raise BadRequest("the request's worst-case cost is too large to reserve; lower max_tokens",
                             code="invalid_request")
        return amount

    def cost(self, model: str, kind: str, prompt_tokens: int, completion_tokens: int) -> int:
        return self.billing.cost(model, "cloud", kind, prompt_tokens=prompt_tokens,
                                 completion_tokens=completion_tokens)

    # -- keys ---------------------------------------------------------------------------------
    def scope_key(self, account: str, key_id: str | None) -> str:
        return f"{self.prefix}bill:{{{account}}}:k:{key_id or '-'}"

    def hold_key(self, account: str, request_id: str) -> str:
        return f"{self.prefix}bill:{{{account}}}:h:{request_id}"

    # -- reserve ------------------------------------------------------------------------------
    async def reserve(self, account: str, request_id: str, amount: int, *, key_id: str | None = None,
                      key_budget: int | None = None) -> Reservation:
        """Reserve ``amount`` micro-credits for the request, or raise PaymentRequired (402).

        Fails closed: when the ledger store cannot be reached the request is refused (503), never
        served unpaid."""
        try:
            return await self._reserve(account, request_id, amount, key_id, key_budget)
        except DomainError:
            raise
        except Exception as exc:  # noqa: BLE001 — e.g. DynamoDB throttling or unreachable
            logger.warning("reservation failed", extra={"error_type": type(exc).__name__})
            raise Unavailable("billing is unavailable, retry the request", code="billing_unavailable") from None

    async def _reserve(self, account: str, request_id: str, amount: int, key_id: str | None,
                       key_budget: int | None) -> Reservation:
        from ig3.billing.models import normalize_account

        account = normalize_account(account)
        scope, hkey = self.scope_key(account, key_id), self.hold_key(account, request_id)
        res = Reservation(request_id, account, amount, scope, hkey, None)
        self._scopes[scope] = time.monotonic()
        self._start_idle_closer()
        try:
            lease = await self._reserve_in_lease(scope, hkey, amount)
            if lease is None:
                lock = self._locks.setdefault(scope, asyncio.Lock())
                async with lock:  # one lease acquisition per scope at a time in this process
                    lease = await self._reserve_in_lease(scope, hkey, amount)  # another may have just leased
                    if lease is None:
                        lease = await self._lease_and_reserve(account, scope, hkey, amount, key_id, key_budget)
            self._scopes[scope] = time.monotonic()  # after the install too: the idle closer watches it
        except RedisUnavailable:
            # Redis out: hold this one request in DynamoDB, exactly as the edge path does.
            await asyncio.to_thread(self.billing.hold, account, request_id, amount, self.hold_ttl_ms / 1000,
                                    key_id=key_id, key_budget=key_budget)
            return res
        res.lease = lease
        return res

    async def _reserve_in_lease(self, scope: str, hkey: str, amount: int) -> str | None:
        raw = await self.redis.eval_script(RESERVE_LUA, [scope, hkey], [amount, self.hold_ttl_ms, self.scope_ttl_ms])
        return _text(raw[1]) if int(raw[0]) == 1 else None

    async def _lease_and_reserve(self, account: str, scope: str, hkey: str, amount: int, key_id: str | None,
                                 key_budget: int | None) -> str:
        big = min(amount * self.lease_factor, max(self.lease_max, amount), MAX_EXACT)
        sizes = [big, amount, amount] if big > amount else [amount, amount]
        last: PaymentRequired | None = None
        for attempt, size in enumerate(sizes):
            if attempt == len(sizes) - 1:
                # The money may sit unreserved in the current lease (a small balance): retire it,
                # free that part now, and try once more before answering 402.
                raw = await self.redis.eval_script(RETIRE_LUA, [scope], [])
                if not _text(raw[0]) or int(raw[1]) <= 0:
                    break
                await self._close(_text(raw[0]), int(raw[1]))
            lease = f"lease_{uuid.uuid4().hex}"
            try:
                await asyncio.to_thread(self.billing.hold, account, lease, size, self.lease_ttl_s, key_id=key_id,
                                        key_budget=key_budget)
            except PaymentRequired as exc:
                last = exc
                continue
            self.leases_acquired += 1
            # If Redis fails here the lease stays held until its expiry: the script may have run
            # (a lost reply), and releasing a lease Redis still hands out would let it overspend.
            raw = await self.redis.eval_script(
                INSTALL_LUA, [scope, hkey], [lease, size, amount, self.use_ms, self.hold_ttl_ms, self.scope_ttl_ms])
            self._close_later(_text(raw[0]), int(raw[1]))
            return lease
        assert last is not None
        raise last

    # -- settle -------------------------------------------------------------------------------
    def settle_soon(self, res: Reservation, charge: int) -> None:
        """Settle off the request path (the reply is not delayed by it); ``drain()`` waits for it."""
        if not res.settled:
            res.settled = True
            if res.lease is not None:
                self._spawn(self._settle(res, charge))

    async def settle(self, res: Reservation, charge: int) -> None:
        """Return the unused part of the reservation to its lease. Idempotent."""
        if not res.settled:
            res.settled = True
            if res.lease is not None:
                await self._settle(res, charge)

    async def _settle(self, res: Reservation, charge: int) -> None:
        # A reservation held directly in DynamoDB (lease None) is settled by its usage event.
        try:
            raw = await self.redis.eval_script(SETTLE_LUA, [res.scope_key, res.hold_key], [max(0, int(charge))])
        except RedisUnavailable:
            return  # the reservation expires with its key; the lease is freed at its own expiry
        if _text(raw[2]):
            await self._close(_text(raw[2]), int(raw[3]))

    # -- closing leases -----------------------------------------------------------------------
    def _close_later(self, lease: str, part: int) -> None:
        if lease:
            self._spawn(self._close(lease, part))

    async def _close(self, lease: str, part: int) -> None:
        try:
            if await asyncio.to_thread(self.billing.shrink_lease, lease, part, uuid.uuid4().hex):
                self.lease_shrinks += 1
        except Exception as exc:  # noqa: BLE001 — the lease's own expiry frees it
            logger.warning("lease close failed", extra={"lease": lease, "error_type": type(exc).__name__})

    async def close_idle(self) -> int:
        """Close this process's idle leases (nothing outstanding for ``idle_close_s``)."""
        closed = 0
        now = time.monotonic()
        for scope, used in list(self._scopes.items()):
            if used < now - self.lease_ttl_s:
                self._forget(scope)  # Redis forgot it too (its TTL)
                continue
            if used > now - self.idle_close_ms / 1000:
                continue  # used here within the idle window: not idle
            try:
                raw = await self.redis.eval_script(IDLE_LUA, [scope], [self.idle_close_ms])
            except RedisUnavailable:
                return closed
            lease = _text(raw[0])
            if lease:
                await self._close(lease, int(raw[1]))
                closed += 1
            # No lease left to watch (a busy one stays on the list) — unless a request of this
            # process touched the scope while the script ran (it may have installed a new lease).
            if (lease or int(raw[1]) < 0) and self._scopes.get(scope) == used:
                self._forget(scope)
        return closed

    def _forget(self, scope: str) -> None:
        self._scopes.pop(scope, None)
        lock = self._locks.get(scope)
        if lock is not None and not lock.locked():
            self._locks.pop(scope, None)

    def _start_idle_closer(self) -> None:
        if self.idle_close_ms > 0 and (self._idle_task is None or self._idle_task.done()):
            self._idle_task = asyncio.get_running_loop().create_task(self._idle_loop())

    async def _idle_loop(self) -> None:
        while True:
            await asyncio.sleep(max(self.idle_close_ms / 2000, 0.05))
            try:
                await self.close_idle()
            except Exception as exc:  # noqa: BLE001 — never let the closer die
                logger.warning("idle lease closer failed", extra={"error_type": type(exc).__name__})

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for pending settles and closes (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
        await self.drain()
        await self.close_idle()
