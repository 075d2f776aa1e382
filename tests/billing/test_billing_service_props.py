"""Property tests: any sequence of credit/hold/settle/release/expire keeps the books exact.

A hypothesis state machine drives BillingService and a plain reference model side by side.
After every step: balances equal ledger sums (reconcile), nothing is ever negative, a request
is charged at most once and never more than its hold. It runs on the in-memory fake (many
examples) and on the DynamoDB adapter against moto server (fewer: every step is HTTP), so the
fake and the real adapter are held to the same properties.
"""

import uuid

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from ig3.billing.models import usage_entry_id
from ig3.billing.pricing import price_book
from ig3.billing.reconcile import reconcile
from ig3.billing.service import BillingService
from ig3.billing.store import MemoryBillingStore
from ig3.errors import BadRequest, Conflict, PaymentRequired

ACCOUNTS = ["0xaaa", "0xbbb"]
REQUESTS = [f"r{i}" for i in range(12)]


class Clock:
    def __init__(self):
        self.t = 1_700_000_000.0

    def __call__(self):
        return self.t


class Books(RuleBasedStateMachine):
    full_reconcile = True  # scan everything each step (the fake's tables hold only this run)

    def make_store(self):
        return MemoryBillingStore()

    def __init__(self):
        super().__init__()
        self.clock = Clock()
        self.p = "" if self.full_reconcile else uuid.uuid4().hex[:8]  # shared tables: unique ids per run
        self.store = self.make_store()
        self.svc = BillingService(self.store, price_book(), clock=self.clock)
        self.deposited = {self.p + a: 0 for a in ACCOUNTS}
        self.charged = {self.p + a: 0 for a in ACCOUNTS}
        self.holds = {}  # request -> (account, amount) as first accepted
        self.settled = {}  # request -> charged amount

    @rule(account=st.sampled_from(ACCOUNTS), amount=st.integers(1, 5_000), ref=st.integers(0, 20))
    def credit(self, account, amount, ref):
        account, reference = self.p + account, f"{self.p}tx{ref}"
        existing = self.store.get_entry(f"deposit#{reference}")
        if existing is None:
            self.svc.credit(account, amount, reference)
            self.deposited[account] += amount
        elif existing.account == account and existing.amount == amount:
            assert self.svc.credit(account, amount, reference) == existing  # idempotent replay
        else:
            with pytest.raises(Conflict):
                self.svc.credit(account, amount, reference)

    @rule(
        account=st.sampled_from(ACCOUNTS),
        request=st.sampled_from(REQUESTS),
        amount=st.integers(0, 4_000),
        ttl=st.integers(1, 120),
    )
    def hold(self, account, request, amount, ttl):
        account, request = self.p + account, self.p + request
        before = self.svc.balance(account)
        try:
            h = self.svc.hold(account, request, amount, ttl)
        except PaymentRequired:
            assert request not in self.holds and amount > before.available
            assert self.svc.balance(account) == before
            return
        except Conflict:
            assert request in self.holds or request in self.settled
            return
        if request in self.holds:
            assert (h.account, h.amount) == self.holds[request]  # idempotent replay
        else:
            assert amount <= before.available
            self.holds[request] = (account, amount)

    @rule(request=st.sampled_from(REQUESTS), actual=st.integers(0, 6_000), account=st.sampled_from(ACCOUNTS))
    def settle(self, request, actual, account):
        account, request = self.p + account, self.p + request
        held = self.holds.get(request)
        if held is None:
            # No hold: usage arriving after expiry or without one; charged against what is available.
            before = self.svc.balance(account)
            if request in self.settled:
                return
            entry = self.svc.settle(request, actual, account=account)
            assert -entry.amount == min(actual, before.available)
            self.settled[request] = -entry.amount
            self.charged[account] += -entry.amount
            return
        try:
            entry = self.svc.settle(request, actual, account=held[0])
        except BadRequest:
            raise AssertionError("a held request always settles")
        if request in self.settled:
            assert -entry.amount == self.settled[request]  # exactly once: the same entry
            return
        assert entry.amount <= 0 and -entry.amount <= actual
        hold_state_before = entry.details.get("held", True)
        if hold_state_before:
            assert -entry.amount <= held[1]  # never more than the hold
        self.settled[request] = -entry.amount
        self.charged[held[0]] += -entry.amount

    @rule(request=st.sampled_from(REQUESTS))
    def release(self, request):
        request = self.p + request
        self.svc.release(request)
        self.svc.release(request)  # idempotent

    @rule(seconds=st.integers(1, 200))
    def time_passes_and_sweep(self, seconds):
        self.clock.t += seconds
        self.svc.expire_holds()
        for request in self.holds:
            h = self.store.get_hold(request)
            assert h.state != "active" or h.expires_ms > int(self.clock.t * 1000)

    @precondition(lambda self: self.settled)
    @rule(data=st.data())
    def no_new_hold_for_a_settled_request(self, data):
        request = data.draw(st.sampled_from(sorted(self.settled)))
        if request not in self.holds:
            with pytest.raises(Conflict):
                self.svc.hold(self.p + ACCOUNTS[0], request, 0, 10)

    @invariant()
    def books_are_exact(self):
        if self.full_reconcile:
            report = reconcile(self.store)
            assert report.ok, report.as_dict()
            assert sum(1 for e in self.store.iter_entries() if e.kind == "usage") == len(self.settled)
        active = {a: 0 for a in self.deposited}
        for request, (account, amount) in self.holds.items():
            if self.store.get_hold(request).state == "active":
                active[account] += amount
        for a in self.deposited:
            b = self.svc.balance(a)
            assert b.total == self.deposited[a] - self.charged[a]
            assert b.available >= 0 and b.held == active[a] and b.available == b.total - b.held
        for request in self.settled:
            assert self.store.get_entry(usage_entry_id(request)) is not None


TestBooks = Books.TestCase
TestBooks.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


@pytest.mark.integration
def test_the_same_properties_hold_on_the_dynamodb_adapter(aws_env, ddb_serialized):
    from hypothesis.stateful import run_state_machine_as_test
    from ig3.billing.dynamo import DynamoBillingStore

    class DynamoBooks(Books):
        full_reconcile = False  # the moto tables are shared with other tests: check own accounts

        def make_store(self):
            store = DynamoBillingStore.from_env()
            store._client = ddb_serialized
            return store

    run_state_machine_as_test(
        DynamoBooks, settings=settings(max_examples=8, stateful_step_count=15, deadline=None)
    )


def test_estimate_then_hold_then_settle_frees_the_rest():
    clock = Clock()
    svc = BillingService(MemoryBillingStore(), price_book(), clock=clock)
    svc.credit("0xAbC", 10_000, "tx1")
    est = svc.estimate("smollm2-135m-instruct", "edge", "chat", 1000, 1000)
    assert est == 150
    h = svc.hold("0xABC", "req-1", est, 60)
    assert svc.balance("0xabc").as_dict() == {
        "account": "0xabc",
        "total": 10_000,
        "held": 150,
        "available": 9_850,
        "unit": "micro-credit",
    }
    entry = svc.settle("req-1", 90)
    assert entry.amount == -90 and entry.account == "0xabc" and h.account == "0xabc"
    assert svc.balance("0xabc").available == 9_910 and svc.balance("0xabc").held == 0
    assert svc.settle("req-1", 90) == entry and svc.settle("req-1", 5_000) == entry


def test_payment_required_is_a_402_with_a_clear_message():
    svc = BillingService(MemoryBillingStore(), price_book())
    svc.credit("0xa", 100, "tx")
    with pytest.raises(PaymentRequired) as info:
        svc.hold("0xa", "r", 101, 30)
    assert info.value.status == 402 and "100 micro-credits available" in info.value.message
    with pytest.raises(BadRequest):
        svc.hold("0xa", "r", 1.5, 30)
    with pytest.raises(BadRequest):
        svc.credit("0xa", 0, "tx0")


@pytest.mark.parametrize("period", [None, "day", "month"])
def test_key_budget_in_the_memory_fake_matches_the_dynamodb_semantics(period):
    clock = Clock()
    svc = BillingService(MemoryBillingStore(), price_book(), clock=clock)
    svc.credit("0xk", 10_000, "tx")
    for i in range(5):
        svc.hold("0xk", f"q{i}", 200, 60, key_id="k1", key_budget=1_000, budget_period=period)
    with pytest.raises(PaymentRequired) as info:
        svc.hold("0xk", "q5", 1, 60, key_id="k1", key_budget=1_000, budget_period=period)
    assert info.value.code == "key_budget_exceeded"
    svc.settle("q0", 50)
    svc.release("q1")
    clock.t += 120
    assert svc.expire_holds() == 3
    assert svc.key_budget_used("k1", period) == 50
    assert reconcile(svc.store).ok
    with pytest.raises(BadRequest):
        svc.hold("0xk", "q9", 1, 60, key_budget=5)  # a budget needs a key
    with pytest.raises(BadRequest):
        svc.hold("0xk", "q9", 1, 60, key_id="k1", key_budget=5, budget_period="fortnight")


def test_expire_holds_takes_seconds_or_a_datetime():
    from datetime import UTC, datetime

    clock = Clock()
    svc = BillingService(MemoryBillingStore(), price_book(), clock=clock)
    svc.credit("0xe", 100, "tx")
    svc.hold("0xe", "h1", 10, 30)
    svc.hold("0xe", "h2", 10, 90)
    assert svc.expire_holds(clock.t + 29) == 0
    assert svc.expire_holds(datetime.fromtimestamp(clock.t + 30, UTC)) == 1
    assert svc.expire_holds(clock.t + 90) == 1 and svc.balance("0xe").available == 100
