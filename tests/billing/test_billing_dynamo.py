"""Billing against DynamoDB (moto server): concurrency, exactly-once usage, expiry, reconcile.

The guards live in TransactWriteItems conditions, so these tests drive the real adapter
through a real HTTP endpoint from many threads, as concurrent Lambda invocations would.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from ig3.billing.dynamo import DynamoBillingStore
from ig3.billing.models import usage_entry_id
from ig3.billing.pricing import price_book
from ig3.billing.reconcile import reconcile
from ig3.billing.service import BillingService
from ig3.errors import Conflict, PaymentRequired

pytestmark = pytest.mark.integration


@pytest.fixture
def svc(aws_env, ddb_serialized):
    store = DynamoBillingStore.from_env()
    store._client = ddb_serialized  # same tables, served one request at a time (see conftest)
    return BillingService(store, price_book())


def wallet() -> str:
    return "0x" + uuid.uuid4().hex + uuid.uuid4().hex[:8]


def test_1000_concurrent_holds_against_a_balance_that_covers_100(svc):
    account, per_request = wallet(), 1_234
    svc.credit(account, 100 * per_request, f"seed-{account}")
    lowest = [svc.balance(account).available]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            lowest[0] = min(lowest[0], svc.balance(account).available)

    def attempt(i: int) -> str:
        try:
            svc.hold(account, f"{account}-req-{i}", per_request, 300)
            return "held"
        except PaymentRequired:
            return "402"

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        outcomes = list(pool.map(attempt, range(1000)))
    stop.set()
    watcher.join()
    elapsed = time.monotonic() - started
    held = outcomes.count("held")
    assert outcomes.count("402") == 1000 - held
    assert (
        held == 100
    ), f"{held} holds succeeded in {elapsed:.1f}s"  # <= 100 is the safety property; all 100 fit
    b = svc.balance(account)
    assert (b.total, b.held, b.available) == (100 * per_request, 100 * per_request, 0)
    assert lowest[0] >= 0
    active = [h for h in svc.store.iter_active_holds() if h.account == account]
    assert len(active) == 100 and sum(h.amount for h in active) == b.held


def test_concurrent_settles_of_the_same_request_write_one_entry(svc):
    account = wallet()
    svc.credit(account, 10_000, f"seed-{account}")
    svc.hold(account, f"{account}-r", 5_000, 60)
    with ThreadPoolExecutor(max_workers=16) as pool:
        entries = list(pool.map(lambda amt: svc.settle(f"{account}-r", amt), [1_000 + i for i in range(40)]))
    assert len({e.entry_id for e in entries}) == 1 and len({e.amount for e in entries}) == 1
    b = svc.balance(account)
    assert b.held == 0 and b.total == 10_000 + entries[0].amount == b.available


def test_hold_settle_release_expire_and_reconcile(svc):
    now = [time.time()]
    svc = BillingService(svc.store, svc.prices, clock=lambda: now[0])
    a = wallet()
    svc.credit(a, 1_000, f"dep-{a}")
    assert svc.credit(a, 1_000, f"dep-{a}").amount == 1_000  # idempotent per reference
    assert svc.balance(a).total == 1_000
    h1 = svc.hold(a, f"{a}-1", 400, 30)
    assert svc.hold(a, f"{a}-1", 400, 30) == h1  # idempotent per request id
    with pytest.raises(Conflict):
        svc.hold(a, f"{a}-1", 401, 30)
    svc.hold(a, f"{a}-2", 300, 30)
    svc.hold(a, f"{a}-3", 300, 600)
    with pytest.raises(PaymentRequired):
        svc.hold(a, f"{a}-4", 1, 30)
    e1 = svc.settle(f"{a}-1", 999)  # more than held: capped at the hold
    assert e1.amount == -400 and e1.requested_amount == 999
    assert svc.release(f"{a}-2").state == "released"
    assert svc.release(f"{a}-2").state == "released"
    now[0] += 31
    svc.expire_holds()  # the table is shared with other tests: check this account's holds only
    assert svc.store.get_hold(f"{a}-3").state == "active"  # 600 s TTL
    assert svc.store.get_hold(f"{a}-2").state == "released"
    now[0] += 600
    assert svc.expire_holds() >= 1
    assert svc.store.get_hold(f"{a}-3").state == "expired"
    assert svc.expire_holds() == 0  # idempotent: nothing left to expire
    # Usage arriving after its hold expired is still billed once, against what is available.
    late = svc.settle(f"{a}-3", 250, account=a)
    assert late.amount == -250 and late.details["held"] is False
    with pytest.raises(Conflict):
        svc.hold(a, f"{a}-3", 10, 30)  # already settled
    assert svc.balance(a).as_dict() == {
        "account": a,
        "total": 350,
        "held": 0,
        "available": 350,
        "unit": "micro-credit",
    }
    report = reconcile(svc.store)
    assert report.ok, report.as_dict()


def test_reconcile_reports_a_tampered_balance(svc, aws_env):
    import boto3

    a = wallet()
    svc.credit(a, 777, f"dep-{a}")
    ddb = boto3.client("dynamodb")
    ddb.update_item(
        TableName=svc.store.accounts_table,
        Key={"account": {"S": a}},
        UpdateExpression="ADD balance :x",
        ExpressionAttributeValues={":x": {"N": "1"}},
    )
    report = reconcile(svc.store)
    bad = [m for m in report.mismatches if m.account == a]
    assert bad and "balance 778 != ledger sum 777" in bad[0].problems
    ddb.update_item(
        TableName=svc.store.accounts_table,
        Key={"account": {"S": a}},
        UpdateExpression="ADD balance :x",
        ExpressionAttributeValues={":x": {"N": "-1"}},
    )
    assert not [m for m in reconcile(svc.store).mismatches if m.account == a]


def test_reconcile_cli_exit_status(svc, aws_env):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "ig3.billing.reconcile"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ},
    )
    out = orjson.loads(proc.stdout)
    assert proc.returncode == (0 if out["ok"] else 1)
    assert out["accounts"] >= 1 and out["entries"] >= 1


def test_usage_listing_pages_filters_newest_first(svc):
    now = [1_800_000_000.0]
    svc = BillingService(svc.store, svc.prices, clock=lambda: now[0])
    a = wallet()
    svc.credit(a, 10**9, f"dep-{a}")
    for i in range(7):
        now[0] += 1
        svc.settle(f"{a}-u{i}", 10 + i, account=a, details={"model": "m-even" if i % 2 == 0 else "m-odd"})
    seen, after = [], None
    while True:
        page, after = svc.usage(a, after=after, limit=3)
        seen += page
        if after is None:
            break
    assert [e.reference for e in seen if e.kind == "usage"] == [f"{a}-u{i}" for i in range(6, -1, -1)]
    page, cursor = svc.usage(a, model="m-odd", limit=10)
    assert [e.reference for e in page] == [f"{a}-u5", f"{a}-u3", f"{a}-u1"] and cursor is None
    since = int((1_800_000_000 + 3) * 1000)
    until = int((1_800_000_000 + 6) * 1000)
    page, _ = svc.usage(a, since_ms=since, until_ms=until, limit=10)
    assert [e.reference for e in page] == [f"{a}-u4", f"{a}-u3", f"{a}-u2"]
    assert usage_entry_id(f"{a}-u0") in {e.entry_id for e in seen}


def test_per_key_budget_caps_concurrent_holds_and_tracks_spend(svc):
    now = [1_900_000_000.0]  # 2030-03-17
    svc = BillingService(svc.store, svc.prices, clock=lambda: now[0])
    a, key = wallet(), "key-" + uuid.uuid4().hex[:8]
    svc.credit(a, 10**9, f"dep-{a}")  # plenty of balance: only the key's budget limits

    def attempt(i: int) -> str:
        try:
            svc.hold(a, f"{a}-k{i}", 100, 300, key_id=key, key_budget=1_000, budget_period="day")
            return "held"
        except PaymentRequired as exc:
            assert exc.code == "key_budget_exceeded"
            return "402"

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(attempt, range(60)))
    assert outcomes.count("held") == 10
    assert svc.key_budget_used(key, "day") == 1_000
    held = [f"{a}-k{i}" for i, o in enumerate(outcomes) if o == "held"]
    svc.settle(held[0], 40)  # reserved 100 -> spent 40
    svc.release(held[1])  # reserved 100 -> 0
    assert svc.key_budget_used(key, "day") == 840
    svc.hold(a, f"{a}-more", 160, 300, key_id=key, key_budget=1_000, budget_period="day")
    with pytest.raises(PaymentRequired):
        svc.hold(a, f"{a}-over", 1, 300, key_id=key, key_budget=1_000, budget_period="day")
    now[0] += 86_400  # a new UTC day: a fresh budget; the account itself is unaffected
    assert svc.key_budget_used(key, "day") == 0
    svc.hold(a, f"{a}-next-day", 1_000, 300, key_id=key, key_budget=1_000, budget_period="day")
    report = reconcile(svc.store)
    assert report.ok, report.as_dict()  # budget counters are not accounts
