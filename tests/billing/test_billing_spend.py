"""Cloud-request reservations (ig3.llm.spend): leases held in DynamoDB (moto server), requests
reserved inside them in the real Redis, charges settled through the usage-event consumer.

The money invariants are asserted on the durable side: the balance never goes below zero, the
ledger holds exactly one entry per served request with exactly its charge, the balance is
exactly the deposit minus those charges once leases close, and reconcile agrees. A hypothesis
property test drives random interleavings (reservations, settles, redelivered events, deposits,
edge-path holds, idle closes) on the real Redis over the in-memory store (same guards).
"""

from __future__ import annotations

import asyncio
import random
import threading
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ig3.billing.dynamo import DynamoBillingStore
from ig3.billing.models import UsageRecorded, usage_entry_id
from ig3.billing.pricing import price_book
from ig3.billing.reconcile import reconcile
from ig3.billing.service import BillingService
from ig3.billing.usage import apply_usage
from ig3.errors import PaymentRequired

pytestmark = pytest.mark.integration


@pytest.fixture
def svc(aws_env, ddb_serialized):
    store = DynamoBillingStore.from_env()
    store._client = ddb_serialized  # same tables, one request at a time (see conftest)
    return BillingService(store, price_book())


MODEL = "smollm2-135m-instruct"


def wallet() -> str:
    return "0x" + uuid.uuid4().hex + uuid.uuid4().hex[:8]


def make_spend(svc, redis_url, prefix, **kw):
    from ig3.llm.redisguard import CircuitBreaker, RedisGuard
    from ig3.llm.spend import CloudSpend

    # Generous timeouts: the machine is shared and loaded; outages are tested separately.
    redis = RedisGuard(redis_url, timeout_s=5.0, breaker=CircuitBreaker(failures_to_open=1000, open_s=1))
    kw.setdefault("idle_close_s", 0)  # no background closer: the test closes idle leases itself
    return CloudSpend(svc, redis, prefix=prefix + "llm:", **kw), redis


def usage_event(account, request_id, prompt, completion, res, status="completed", **extra):
    return UsageRecorded.model_validate({
        "request_id": request_id, "account": account, "model": MODEL, "route": "cloud",
        "kind": "chat", "prompt_tokens": prompt, "completion_tokens": completion, "status": status,
        **res.event_fields(), **extra})


class LowWatermark:
    """Polls the account from another thread while the test runs: the lowest available seen."""

    def __init__(self, svc, account):
        self.svc, self.account = svc, account
        self.lowest = svc.balance(account).available
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            b = self.svc.balance(self.account)
            self.lowest = min(self.lowest, b.available, b.total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(30)
        return self.lowest


def test_300_concurrent_requests_on_a_balance_for_30_never_overspend(svc, redis_url, redis_prefix):
    account = wallet()
    model, kind = MODEL, "chat"
    spend, redis = make_spend(svc, redis_url, redis_prefix, lease_factor=8)
    per_request = spend.estimate(model, kind, 200, 300)  # a worst case: 200 prompt + 300 output tokens
    svc.credit(account, 30 * per_request, f"seed-{account}")
    watch = LowWatermark(svc, account)
    rng = random.Random(8)
    usage = {f"req_{i}": (rng.randint(1, 200), rng.randint(0, 300)) for i in range(300)}

    async def scenario():
        async def one(rid):
            try:
                return await spend.reserve(account, rid, per_request)
            except PaymentRequired as exc:
                return exc

        outcomes = await asyncio.gather(*(one(rid) for rid in usage))
        served = [r for r in outcomes if not isinstance(r, Exception)]
        refused = [r for r in outcomes if isinstance(r, PaymentRequired)]
        # All reservations are still outstanding here: the most that can ever be in flight at once.
        events = []
        for r in served:
            p, c = usage[r.request_id]
            events.append(usage_event(account, r.request_id, p, c, r))
        # Half the usage events reach billing before Redis settles, half after the leases close.
        early, late = events[: len(events) // 2], events[len(events) // 2:]
        for ev in early:
            await asyncio.to_thread(apply_usage, svc, ev)
        for r in served:
            p, c = usage[r.request_id]
            await spend.settle(r, spend.cost(model, kind, p, c))
        await spend.drain()
        await spend.close_idle()
        for ev in late + early[:5]:  # plus duplicates of already-applied events
            await asyncio.to_thread(apply_usage, svc, ev)
        await redis.close()
        return served, refused

    served, refused = asyncio.run(scenario())
    lowest = watch.stop()
    assert len(served) == 30 and len(refused) == 270
    assert all(e.code == "insufficient_balance" for e in refused)
    assert lowest >= 0
    charges = {r.request_id: spend.cost(model, kind, *usage[r.request_id]) for r in served}
    for rid, charge in charges.items():
        entry = svc.store.get_entry(usage_entry_id(rid))
        assert entry is not None and entry.amount == -charge and entry.details.get("lease")
    bal = svc.balance(account)
    assert bal.total == 30 * per_request - sum(charges.values())
    assert bal.held == 0 and bal.available == bal.total  # every lease closed: nothing stays reserved
    report = reconcile(svc.store)
    assert [m for m in report.mismatches if m.account == account] == []


def test_unused_reservations_return_to_the_lease_and_serve_more_requests(svc, redis_url, redis_prefix):
    """Sequential requests that each use little of their worst case: the lease is reused, not re-held."""
    account = wallet()
    spend, redis = make_spend(svc, redis_url, redis_prefix, lease_factor=4)
    per_request = spend.estimate(MODEL, "chat", 100, 1000)
    svc.credit(account, 4 * per_request, f"seed-{account}")

    async def scenario():
        charged = 0
        for i in range(40):  # 10x what the balance covers at the worst case
            r = await spend.reserve(account, f"r{i}", per_request)
            cost = spend.cost(MODEL, "chat", 100, 10)
            apply_usage(svc, usage_event(account, f"r{i}", 100, 10, r))
            await spend.settle(r, cost)
            charged += cost
        await spend.drain()
        await spend.close_idle()
        await spend.drain()
        await redis.close()
        return charged

    charged = asyncio.run(scenario())
    assert spend.leases_acquired == 1 and spend.lease_shrinks == 1
    bal = svc.balance(account)
    assert bal.total == 4 * per_request - charged and bal.held == 0


def test_a_failed_request_is_not_billed_and_frees_its_reservation(svc, redis_url, redis_prefix):
    account = wallet()
    spend, redis = make_spend(svc, redis_url, redis_prefix, lease_factor=1)
    per_request = spend.estimate(MODEL, "chat", 50, 100)
    svc.credit(account, per_request, f"seed-{account}")

    async def scenario():
        r = await spend.reserve(account, "fails", per_request)
        with pytest.raises(PaymentRequired):  # the only request's worth is reserved
            await spend.reserve(account, "second", per_request)
        apply_usage(svc, usage_event(account, "fails", 0, 0, r, status="failed"))
        await spend.settle(r, 0)
        await spend.settle(r, 0)  # idempotent
        r2 = await spend.reserve(account, "second", per_request)  # the money is back
        await spend.settle(r2, 0)
        await spend.drain()
        await spend.close_idle()
        await spend.drain()
        await redis.close()

    asyncio.run(scenario())
    assert svc.store.get_entry(usage_entry_id("fails")) is None
    bal = svc.balance(account)
    assert bal.total == per_request and bal.held == 0 and bal.available == per_request


def test_redis_down_holds_the_request_directly_in_the_ledger_store(svc, redis_prefix):
    from ig3.llm.redisguard import CircuitBreaker, RedisGuard
    from ig3.llm.spend import CloudSpend
    from tests.conftest import free_port

    account = wallet()
    dead = RedisGuard(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5,
                      breaker=CircuitBreaker(failures_to_open=1, open_s=60))
    spend = CloudSpend(svc, dead, prefix=redis_prefix, idle_close_s=0)
    per_request = spend.estimate(MODEL, "chat", 50, 100)
    svc.credit(account, per_request + 10, f"seed-{account}")

    async def scenario():
        r = await spend.reserve(account, "direct-1", per_request)
        assert r.lease is None and r.event_fields() == {}
        with pytest.raises(PaymentRequired):
            await spend.reserve(account, "direct-2", per_request)
        await spend.settle(r, 7)
        await dead.close()
        return r

    r = asyncio.run(scenario())
    assert svc.store.get_hold("direct-1").state == "active"
    apply_usage(svc, usage_event(account, "direct-1", 10, 10, r))
    entry = svc.store.get_entry(usage_entry_id("direct-1"))
    assert entry.amount == -spend.cost(MODEL, "chat", 10, 10)
    bal = svc.balance(account)
    assert bal.held == 0 and bal.total == per_request + 10 + entry.amount


def test_key_budget_caps_leases_and_counts_usage_without_a_hold(svc, redis_url, redis_prefix):
    account, key = wallet(), "key_" + uuid.uuid4().hex[:8]
    spend, redis = make_spend(svc, redis_url, redis_prefix, lease_factor=8)
    per_request = spend.estimate(MODEL, "chat", 50, 100)
    svc.credit(account, 100 * per_request, f"seed-{account}")
    budget = 2 * per_request

    async def scenario():
        # a lease of exactly one request: 8 would exceed the budget
        a = await spend.reserve(account, "k1", per_request, key_id=key, key_budget=budget)
        b = await spend.reserve(account, "k2", per_request, key_id=key, key_budget=budget)
        with pytest.raises(PaymentRequired) as exc:
            await spend.reserve(account, "k3", per_request, key_id=key, key_budget=budget)
        assert exc.value.code == "key_budget_exceeded"
        for r in (a, b):
            apply_usage(svc, usage_event(account, r.request_id, 10, 10, r, key_id=key, key_budget=budget))
            await spend.settle(r, spend.cost(MODEL, "chat", 10, 10))
        await spend.drain()
        await spend.close_idle()
        await spend.drain()
        await redis.close()

    asyncio.run(scenario())
    charge = spend.cost(MODEL, "chat", 10, 10)
    assert svc.key_budget_used(key) == 2 * charge  # the leases' reservations became exactly the spend
    # Usage that arrives without any hold (e.g. after expiry) still counts against the key's budget.
    svc.settle("k-unheld", 5 * charge, account=account, key_id=key, key_budget=budget)
    assert svc.key_budget_used(key) == 7 * charge
    svc.settle("k-no-budget", 5 * charge, account=account, key_id="other-key")
    assert svc.key_budget_used("other-key") == 0


def test_a_lease_that_expired_still_bills_late_usage_against_what_is_available(svc, redis_url, redis_prefix):
    account = wallet()
    spend, redis = make_spend(svc, redis_url, redis_prefix, lease_factor=2)
    per_request = spend.estimate(MODEL, "chat", 50, 100)
    svc.credit(account, 2 * per_request, f"seed-{account}")

    async def scenario():
        r = await spend.reserve(account, "late", per_request)
        await redis.close()
        return r

    r = asyncio.run(scenario())
    lease = svc.store.get_hold(r.lease)
    assert lease.amount == 2 * per_request
    assert svc.expire_holds(lease.expires_ms / 1000 + 1) >= 1  # the process died: the sweep frees it
    assert svc.balance(account).held == 0
    apply_usage(svc, usage_event(account, "late", 10, 20, r))
    entry = svc.store.get_entry(usage_entry_id("late"))
    assert entry.amount == -spend.cost(MODEL, "chat", 10, 20) and "lease" not in entry.details
    assert svc.balance(account).total == 2 * per_request + entry.amount


def test_money_left_unreserved_in_a_lease_is_freed_before_answering_402(svc, redis_url, redis_prefix):
    """A small balance: the first request's lease keeps its unused part; the second request must
    not be refused while the wallet can in fact afford it."""
    account = wallet()
    spend, redis = make_spend(svc, redis_url, redis_prefix, lease_factor=8)
    per_request = spend.estimate(MODEL, "chat", 50, 100)
    deposit = per_request + per_request // 2
    svc.credit(account, deposit, f"seed-{account}")

    async def scenario():
        charged = 0
        for i in range(3):
            r = await spend.reserve(account, f"small-{i}", per_request)
            cost = spend.cost(MODEL, "chat", 5, 5)
            apply_usage(svc, usage_event(account, r.request_id, 5, 5, r))
            await spend.settle(r, cost)
            await spend.drain()
            charged += cost
        await spend.close_idle()
        await spend.drain()
        await redis.close()
        return charged

    charged = asyncio.run(scenario())
    bal = svc.balance(account)
    assert bal.total == deposit - charged and bal.held == 0


def test_a_lease_shrink_is_applied_once_per_token(svc):
    account = wallet()
    svc.credit(account, 1000, f"seed-{account}")
    lease = "lease_" + uuid.uuid4().hex
    svc.hold(account, lease, 900, 300)
    assert svc.shrink_lease(lease, 400, "tok-1") and svc.shrink_lease(lease, 400, "tok-1")
    assert svc.store.get_hold(lease).amount == 500 and svc.balance(account).held == 500
    assert not svc.shrink_lease(lease, 501, "tok-2")  # never more than the lease still holds
    assert svc.shrink_lease(lease, 500, "tok-3")
    bal = svc.balance(account)
    assert bal.held == 0 and bal.available == bal.total == 1000


# -- property: any interleaving of reservations, settles, usage events, deposits, edge holds and
# lease closes keeps the money exact and never reserves what the wallet does not have ----------
OPS = st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 7), st.sampled_from([100, 250, 700])),
    st.tuples(st.just("settle"), st.integers(0, 7), st.integers(0, 100)),  # charge: % of the reservation
    st.tuples(st.just("apply"), st.integers(0, 7), st.just(0)),  # deliver (or redeliver) a usage event
    st.tuples(st.just("deposit"), st.integers(0, 3), st.sampled_from([300, 1000])),
    st.tuples(st.just("edge_hold"), st.integers(0, 3), st.sampled_from([200, 600])),
    st.tuples(st.just("edge_release"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("idle"), st.just(0), st.just(0)),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, max_size=40), factor=st.sampled_from([1, 3, 8]),
       start=st.sampled_from([0, 500, 2000]))
def test_any_interleaving_keeps_the_books_exact(redis_url, redis_prefix, ops, factor, start):
    from ig3.billing.store import MemoryBillingStore
    from ig3.llm.redisguard import CircuitBreaker, RedisGuard
    from ig3.llm.spend import CloudSpend

    svc = BillingService(MemoryBillingStore(), price_book())
    account = "0xprop"
    if start:
        svc.credit(account, start, "seed")
    run = redis_prefix + uuid.uuid4().hex[:6] + ":"

    async def scenario():
        redis = RedisGuard(redis_url, timeout_s=5.0, breaker=CircuitBreaker(failures_to_open=1000))
        spend = CloudSpend(svc, redis, prefix=run, lease_factor=factor, idle_close_s=0)
        reservations, events, charges, edge = {}, {}, {}, set()
        deposited = start

        def committed() -> int:
            """What the wallet owes or has promised: settled charges, outstanding reservations, edge holds."""
            outstanding = sum(r.amount for rid, r in reservations.items() if rid not in charges)
            edge_held = sum(h.amount for h in svc.store.iter_active_holds() if h.request_id[:4] == "edge")
            return sum(charges.values()) + outstanding + edge_held

        for op, i, x in ops:
            rid = f"q{i}"
            if op == "reserve" and rid not in reservations:
                try:
                    reservations[rid] = await spend.reserve(account, rid, x)
                except PaymentRequired:
                    continue
                assert committed() <= deposited  # never promised more than was deposited
            elif op == "settle" and rid in reservations and rid not in charges:
                r = reservations[rid]
                charges[rid] = r.amount * x // 100
                events[rid] = UsageRecorded.model_validate({
                    "request_id": rid, "account": account, "model": MODEL, "route": "cloud", "kind": "chat",
                    "status": "completed", **r.event_fields()})
                await spend.settle(r, charges[rid])
            elif op == "apply" and rid in events:
                entry = svc.settle(rid, charges[rid], account=account, details={},
                                   lease=events[rid].lease, reserved=events[rid].reserved)
                assert entry.amount == -charges[rid]
            elif op == "deposit":
                svc.credit(account, x, f"dep-{uuid.uuid4().hex}")
                deposited += x
            elif op == "edge_hold" and f"edge{i}" not in edge:
                try:
                    svc.hold(account, f"edge{i}", x, 600)
                    edge.add(f"edge{i}")
                    assert committed() <= deposited
                except PaymentRequired:
                    pass
            elif op == "edge_release" and f"edge{i}" in edge:
                svc.release(f"edge{i}")
            elif op == "idle":
                await spend.close_idle()
            b = svc.balance(account)
            assert b.available >= 0 and b.total >= 0
        # Everything finishes: every reservation settles, every event arrives, leases go idle.
        for rid, r in reservations.items():
            if rid not in charges:
                charges[rid] = r.amount // 2
                events[rid] = UsageRecorded.model_validate({
                    "request_id": rid, "account": account, "model": MODEL, "route": "cloud", "kind": "chat",
                    "status": "completed", **r.event_fields()})
                await spend.settle(r, charges[rid])
        for rid, ev in events.items():
            svc.settle(rid, charges[rid], account=account, details={}, lease=ev.lease, reserved=ev.reserved)
        for e in edge:
            svc.release(e)
        await spend.close_idle()
        await spend.drain()
        await redis.close()
        return deposited, charges

    deposited, charges = asyncio.run(scenario())
    bal = svc.balance(account)
    assert bal.total == deposited - sum(charges.values())
    assert bal.held == 0 and bal.available == bal.total
    assert reconcile(svc.store).ok


def test_an_unreachable_ledger_store_refuses_the_request_503(aws_env, redis_url, redis_prefix):
    import boto3
    from botocore.config import Config
    from ig3.errors import Unavailable
    from tests.conftest import free_port

    dead = boto3.client("dynamodb", endpoint_url=f"http://127.0.0.1:{free_port()}", region_name="us-east-1",
                        config=Config(connect_timeout=1, retries={"max_attempts": 1}))
    store = DynamoBillingStore.from_env()
    store._client = dead
    spend, redis = make_spend(BillingService(store, price_book()), redis_url, redis_prefix)

    async def scenario():
        try:
            with pytest.raises(Unavailable) as exc:
                await spend.reserve(wallet(), "no-ledger", 100)
            assert exc.value.status == 503 and exc.value.code == "billing_unavailable"
        finally:
            await redis.close()

    asyncio.run(scenario())
