"""Reconciliation: prove every account's balance is the sum of its ledger entries.

Checks, per account: ``balance == Σ ledger.amount``, ``held == Σ active hold amounts``,
``available == balance - held``, ``available >= 0``; and per request: at most one usage entry
(guaranteed by the entry id) whose charge never exceeds its requested amount.

A scan is not a snapshot: a request settling while the scan runs can look like a mismatch.
So a mismatched account is re-checked once, after the scan, from a fresh strongly consistent
read of the account and of its own entries and holds; only a mismatch that survives that is
reported. Run it from the operator CLI::

    python -m ig3.billing.reconcile   # exit 0: all accounts reconcile; 1: mismatches (JSON on stdout)
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from ig3.billing.store import BillingStore


@dataclass(frozen=True)
class Mismatch:
    account: str
    balance: int
    ledger_sum: int
    held: int
    active_holds: int
    available: int
    problems: tuple[str, ...]


@dataclass
class Report:
    accounts: int = 0
    entries: int = 0
    active_holds: int = 0
    ledger_total: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "accounts": self.accounts,
            "entries": self.entries,
            "active_holds": self.active_holds,
            "ledger_total": self.ledger_total,
            "mismatches": [asdict(m) for m in self.mismatches],
        }


def _problems(balance: int, ledger_sum: int, held: int, holds_sum: int, available: int) -> tuple[str, ...]:
    problems = []
    if balance != ledger_sum:
        problems.append(f"balance {balance} != ledger sum {ledger_sum}")
    if held != holds_sum:
        problems.append(f"held {held} != active holds {holds_sum}")
    if available != balance - held:
        problems.append(f"available {available} != balance - held {balance - held}")
    if available < 0:
        problems.append(f"available {available} < 0")
    return tuple(problems)


def reconcile(store: BillingStore) -> Report:
    report = Report()
    sums: dict[str, int] = defaultdict(int)
    bad_entries: dict[str, list[str]] = defaultdict(list)
    for e in store.iter_entries():
        report.entries += 1
        report.ledger_total += e.amount
        sums[e.account] += e.amount
        if e.kind == "usage" and (
            e.amount > 0 or (e.requested_amount is not None and -e.amount > e.requested_amount)
        ):
            bad_entries[e.account].append(
                f"usage entry {e.entry_id} charges {-e.amount} (> requested or negative)"
            )
    held: dict[str, int] = defaultdict(int)
    for h in store.iter_active_holds():
        report.active_holds += 1
        held[h.account] += h.amount
    suspects = set(bad_entries)
    seen = set()
    for acct in store.iter_accounts():
        report.accounts += 1
        seen.add(acct.account)
        if _problems(acct.balance, sums[acct.account], acct.held, held[acct.account], acct.available):
            suspects.add(acct.account)
    suspects |= {a for a in sums if a not in seen and sums[a] != 0}
    suspects |= {a for a in held if a not in seen and held[a] != 0}
    for account in sorted(suspects):
        m = _recheck(store, account, bad_entries.get(account, []))
        if m is not None:
            report.mismatches.append(m)
    return report


def _recheck(store: BillingStore, account: str, entry_problems: list[str]) -> Mismatch | None:
    acct = store.get_account(account)
    balance, held_attr, available = (acct.balance, acct.held, acct.available) if acct else (0, 0, 0)
    ledger_sum = sum(e.amount for e in store.iter_entries() if e.account == account)
    holds_sum = sum(h.amount for h in store.iter_active_holds() if h.account == account)
    problems = _problems(balance, ledger_sum, held_attr, holds_sum, available) + tuple(entry_problems)
    if not problems:
        return None
    return Mismatch(
        account=account,
        balance=balance,
        ledger_sum=ledger_sum,
        held=held_attr,
        active_holds=holds_sum,
        available=available,
        problems=problems,
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    import orjson

    parser = argparse.ArgumentParser(
        prog="python -m ig3.billing.reconcile",
        description="Prove balances equal ledger sums (exit 1 on any mismatch).",
    )
    parser.parse_args(argv)
    from ig3.billing.dynamo import DynamoBillingStore

    report = reconcile(DynamoBillingStore.from_env())
    sys.stdout.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
