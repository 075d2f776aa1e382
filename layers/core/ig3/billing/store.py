"""The billing store port (accounts, ledger, holds) and its in-memory fake.

Every mutating method is one atomic step with its guard inside it, so correctness never
depends on a read-then-write in the caller:

- ``put_hold``: hold absent AND no usage entry for that request AND ``available >= amount``;
  then ``held += amount``, ``available -= amount``.
- ``settle_hold``: hold still ``active`` AND ledger entry absent; the hold becomes ``settled``,
  the entry is written, ``balance += entry.amount``, ``held -= hold.amount``,
  ``available += hold.amount + entry.amount`` (entry.amount is the negative charge).
- ``end_hold``: hold still ``active``; it becomes released/expired and its amount is freed.
- ``post``: ledger entry absent (and, for debits, ``available >= -amount``); balance and
  available move by ``amount``; a usage entry made under an API key budget also adds its
  charge to that key's counter (spend without a hold still counts against the budget).
- ``charge_hold``: draw one request's charge from a *lease* (a hold that backs many requests,
  see ``ig3.llm.spend``): lease still ``active`` with ``amount >= charge`` AND entry absent; the
  entry is written, the lease and ``held`` shrink by the charge, ``balance`` drops by it,
  ``available`` is unchanged (the money was already reserved). The key budget counter is
  unchanged too: its reservation simply became spend.
- ``shrink_lease``: free part of a lease (what no request will use any more): lease ``active``
  with ``amount >= part``; the lease, ``held`` (and its key budget counter) shrink by it. A lease
  may shrink several times (its unreserved part when it is retired, the rest when its last
  request settles); each shrink carries a token, and a repeated token is a no-op.

The account item keeps ``available = balance - held`` as a stored attribute because DynamoDB
condition expressions cannot do arithmetic: ``available >= :amount`` is the whole guard.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Protocol

from ig3.billing.models import AccountRecord, Hold, LedgerEntry, usage_entry_id


class StoreError(Exception):
    pass


class InsufficientFunds(StoreError):
    def __init__(self, available: int):
        super().__init__(f"available {available}")
        self.available = available


class HoldExists(StoreError):
    def __init__(self, existing: Hold):
        super().__init__(existing.request_id)
        self.existing = existing


class AlreadySettled(StoreError):
    """A usage entry for this request already exists: no new hold may be placed for it."""


class EntryExists(StoreError):
    def __init__(self, existing: LedgerEntry):
        super().__init__(existing.entry_id)
        self.existing = existing


class HoldNotActive(StoreError):
    pass


class BudgetExceeded(StoreError):
    """The API key's budget for the period cannot cover this hold."""

    def __init__(self, used: int, limit: int):
        super().__init__(f"used {used} of {limit}")
        self.used, self.limit = used, limit


class BillingStore(Protocol):
    def put_hold(self, hold: Hold) -> None: ...

    def settle_hold(self, hold: Hold, entry: LedgerEntry) -> None: ...

    def end_hold(self, hold: Hold, state: str) -> bool: ...

    def post(self, entry: LedgerEntry, *, require_available: bool, budget_key: str | None = None) -> None: ...

    def charge_hold(self, hold: Hold, entry: LedgerEntry) -> None: ...

    def shrink_lease(self, hold: Hold, part: int, token: str) -> bool: ...

    def get_hold(self, request_id: str) -> Hold | None: ...

    def get_entry(self, entry_id: str) -> LedgerEntry | None: ...

    def get_account(self, account: str) -> AccountRecord | None: ...

    def budget_used(self, budget_key: str) -> int: ...

    def list_entries(
        self,
        account: str,
        *,
        since_ms: int | None,
        until_ms: int | None,
        model: str | None,
        after: str | None,
        limit: int,
    ) -> tuple[list[LedgerEntry], str | None]: ...

    def entries_for_device(self, device: str, *, since_ms: int, until_ms: int) -> Iterator[LedgerEntry]: ...

    def expiring_holds(self, now_ms: int, limit: int) -> list[Hold]: ...

    def iter_accounts(self) -> Iterator[AccountRecord]: ...

    def iter_entries(self) -> Iterator[LedgerEntry]: ...

    def iter_active_holds(self) -> Iterator[Hold]: ...


class MemoryBillingStore:
    """In-memory fake with the same guards, one lock for atomicity. For unit tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accounts: dict[str, AccountRecord] = {}
        self.entries: dict[str, LedgerEntry] = {}
        self.holds: dict[str, Hold] = {}
        self.budgets: dict[str, int] = {}  # budget key -> reserved + spent in the period
        self.shrink_tokens: set[str] = set()  # lease shrinks already applied

    def _account(self, account: str) -> AccountRecord:
        return self.accounts.get(account) or AccountRecord(account, 0, 0, 0)

    def put_hold(self, hold: Hold) -> None:
        with self._lock:
            if hold.request_id in self.holds:
                raise HoldExists(self.holds[hold.request_id])
            if usage_entry_id(hold.request_id) in self.entries:
                raise AlreadySettled(hold.request_id)
            acct = self._account(hold.account)
            if acct.available < hold.amount:
                raise InsufficientFunds(acct.available)
            if hold.budget_key is not None and hold.budget_limit is not None:
                used = self.budgets.get(hold.budget_key, 0)
                if used + hold.amount > hold.budget_limit:
                    raise BudgetExceeded(used, hold.budget_limit)
                self.budgets[hold.budget_key] = used + hold.amount
            self.accounts[hold.account] = replace(
                acct, held=acct.held + hold.amount, available=acct.available - hold.amount
            )
            self.holds[hold.request_id] = hold

    def settle_hold(self, hold: Hold, entry: LedgerEntry) -> None:
        with self._lock:
            if entry.entry_id in self.entries:
                raise EntryExists(self.entries[entry.entry_id])
            current = self.holds.get(hold.request_id)
            if current is None or current.state != "active":
                raise HoldNotActive(hold.request_id)
            acct = self._account(current.account)
            self.accounts[current.account] = replace(
                acct,
                balance=acct.balance + entry.amount,
                held=acct.held - current.amount,
                available=acct.available + current.amount + entry.amount,
            )
            self.holds[hold.request_id] = replace(current, state="settled")
            if current.budget_key is not None:  # the reservation becomes the actual spend
                # reserved hold.amount -> spent charge (= -entry.amount)
                self.budgets[current.budget_key] = (
                    self.budgets.get(current.budget_key, 0) - current.amount - entry.amount
                )
            self.entries[entry.entry_id] = entry

    def end_hold(self, hold: Hold, state: str) -> bool:
        with self._lock:
            current = self.holds.get(hold.request_id)
            if current is None or current.state != "active":
                return False
            acct = self._account(current.account)
            self.accounts[current.account] = replace(
                acct, held=acct.held - current.amount, available=acct.available + current.amount
            )
            self.holds[hold.request_id] = replace(current, state=state)  # type: ignore[arg-type]
            if current.budget_key is not None:
                self.budgets[current.budget_key] = self.budgets.get(current.budget_key, 0) - current.amount
            return True

    def post(self, entry: LedgerEntry, *, require_available: bool, budget_key: str | None = None) -> None:
        with self._lock:
            if entry.entry_id in self.entries:
                raise EntryExists(self.entries[entry.entry_id])
            acct = self._account(entry.account)
            if require_available and entry.amount < 0 and acct.available < -entry.amount:
                raise InsufficientFunds(acct.available)
            self.accounts[entry.account] = replace(
                acct, balance=acct.balance + entry.amount, available=acct.available + entry.amount
            )
            if budget_key is not None and entry.amount < 0:
                self.budgets[budget_key] = self.budgets.get(budget_key, 0) - entry.amount
            self.entries[entry.entry_id] = entry

    def charge_hold(self, hold: Hold, entry: LedgerEntry) -> None:
        with self._lock:
            if entry.entry_id in self.entries:
                raise EntryExists(self.entries[entry.entry_id])
            current = self.holds.get(hold.request_id)
            if current is None or current.state != "active" or current.amount < -entry.amount:
                raise HoldNotActive(hold.request_id)
            acct = self._account(current.account)
            self.accounts[current.account] = replace(
                acct, balance=acct.balance + entry.amount, held=acct.held + entry.amount
            )
            self.holds[hold.request_id] = replace(current, amount=current.amount + entry.amount)
            self.entries[entry.entry_id] = entry

    def shrink_lease(self, hold: Hold, part: int, token: str) -> bool:
        with self._lock:
            current = self.holds.get(hold.request_id)
            if token in self.shrink_tokens:
                return True
            if current is None or current.state != "active" or current.amount < part:
                return False
            self.shrink_tokens.add(token)
            acct = self._account(current.account)
            self.accounts[current.account] = replace(
                acct, held=acct.held - part, available=acct.available + part
            )
            self.holds[hold.request_id] = replace(current, amount=current.amount - part)
            if current.budget_key is not None:
                self.budgets[current.budget_key] = self.budgets.get(current.budget_key, 0) - part
            return True

    def get_hold(self, request_id: str) -> Hold | None:
        return self.holds.get(request_id)

    def get_entry(self, entry_id: str) -> LedgerEntry | None:
        return self.entries.get(entry_id)

    def get_account(self, account: str) -> AccountRecord | None:
        return self.accounts.get(account)

    def budget_used(self, budget_key: str) -> int:
        return self.budgets.get(budget_key, 0)

    def list_entries(
        self,
        account: str,
        *,
        since_ms: int | None,
        until_ms: int | None,
        model: str | None,
        after: str | None,
        limit: int,
    ) -> tuple[list[LedgerEntry], str | None]:
        with self._lock:
            rows = [e for e in self.entries.values() if e.account == account]
        rows.sort(key=lambda e: e.ts_key, reverse=True)  # newest first, like the DynamoDB query
        rows = [
            e
            for e in rows
            if (after is None or e.ts_key < after)
            and (since_ms is None or e.ts_ms >= since_ms)
            and (until_ms is None or e.ts_ms < until_ms)
            and (model is None or e.details.get("model") == model)
        ]
        page = rows[:limit]
        return page, (page[-1].ts_key if len(rows) > limit else None)

    def entries_for_device(self, device: str, *, since_ms: int, until_ms: int) -> Iterator[LedgerEntry]:
        with self._lock:
            rows = [
                e
                for e in self.entries.values()
                if e.details.get("device") == device and since_ms <= e.ts_ms < until_ms
            ]
        yield from sorted(rows, key=lambda e: e.ts_key)

    def expiring_holds(self, now_ms: int, limit: int) -> list[Hold]:
        with self._lock:
            rows = [h for h in self.holds.values() if h.state == "active" and h.expires_ms <= now_ms]
        return sorted(rows, key=lambda h: h.expires_ms)[:limit]

    def iter_accounts(self) -> Iterator[AccountRecord]:
        with self._lock:
            rows = list(self.accounts.values())
        yield from rows

    def iter_entries(self) -> Iterator[LedgerEntry]:
        with self._lock:
            rows = list(self.entries.values())
        yield from rows

    def iter_active_holds(self) -> Iterator[Hold]:
        with self._lock:
            rows = [h for h in self.holds.values() if h.state == "active"]
        yield from rows
