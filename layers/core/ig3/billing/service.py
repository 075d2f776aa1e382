"""BillingService: hold and settle, exactly-once ledger, deposits, balances.

Design (why it is shaped like this):
- **Hold and settle.** Before work starts the caller reserves the most the request can cost
  (``estimate`` with ``max_tokens``); the store's guard ``available >= amount`` is one
  conditional write, so concurrent requests can never reserve more than the balance and the
  balance never goes negative. On completion ``settle`` charges the actual cost and frees the
  rest of the hold in the same atomic step; failed work only ``release``\\ s; abandoned holds
  ``expire_holds`` after their TTL.
- **Exactly once.** A request's ledger entry id is ``usage#<request_id>``, written with
  ``attribute_not_exists``; a second settle (a redelivered event, a retry after a crash) finds
  the entry and returns it. A hold for a request that was already settled is refused.
- **Charges never exceed the hold.** The hold is the customer's promised maximum; if the
  priced cost is higher (a model overran ``max_tokens``), the charge is capped at the hold
  and the entry records the ``requested_amount``. Usage that arrives with no active hold
  (it expired, or the caller never held) is charged against what is available, capped at it,
  again recording the requested amount, so no path takes a balance below zero.
- **Balances are the ledger.** Every change of ``balance`` happens in the same atomic step
  as the ledger entry that explains it; ``ig3.billing.reconcile`` proves the sums agree.
- **Hot keys** (ARCHITECTURE §2): one account item per wallet. Each hold and settle is a
  DynamoDB transaction touching it (transactions cost 2 WCU per item), so one wallet tops
  out around 250 requests/s on its partition. That is far above a single user's rate and
  keeps every guard a single-item condition; a wallet that needs more (a platform key) would
  be split into N sub-accounts ``<wallet>#<k>`` funded from the main one, each with its own
  ``available`` guard, and a hold picks a sub-account by request-id hash. Not built: no
  wallet here needs it yet, and the ledger stays exact either way.
- **Leases** (``ig3.llm.spend``): the LLM gateway's cloud requests do not hold one by one. The
  gateway holds a *lease* (an ordinary hold, same guard and key budget) worth several requests
  and reserves each request inside it in Redis; ``settle(..., lease=, reserved=)`` draws each
  request's charge from the lease (``charge_hold``: the lease and ``held`` shrink, ``available``
  does not move), and ``shrink_lease`` gives back, exactly once per token, what no request used.
  One DynamoDB transaction per request (its ledger entry) plus a few per lease, instead of two
  per request (hold, settle): this is also the hot-key relief for busy wallets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ig3.billing.models import (
    AccountRecord,
    Balance,
    Hold,
    LedgerEntry,
    budget_key,
    deposit_entry_id,
    normalize_account,
    usage_entry_id,
)
from ig3.billing.pricing import PriceBook
from ig3.billing.store import (
    AlreadySettled,
    BillingStore,
    BudgetExceeded,
    EntryExists,
    HoldExists,
    HoldNotActive,
    InsufficientFunds,
)
from ig3.errors import BadRequest, Conflict, PaymentRequired

MAX_HOLD_TTL_S = 24 * 3600
_CHARGE_ATTEMPTS = 8


def _amount(value: Any, name: str, *, positive: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer number of micro-credits", code="invalid_amount")
    if value < 0 or (positive and value == 0):
        raise BadRequest(
            f"{name} must be {'positive' if positive else 'non-negative'}", code="invalid_amount"
        )
    return value


class BillingService:
    def __init__(self, store: BillingStore, prices: PriceBook, clock: Callable[[], float] = time.time):
        self.store = store
        self.prices = prices
        self._clock = clock

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- pricing ----------------------------------------------------------------------------
    def estimate(self, model: str, route: str, kind: str, prompt_tokens: int, max_tokens: int) -> int:
        return self.prices.estimate(model, route, kind, prompt_tokens, max_tokens)

    def cost(
        self,
        model: str,
        route: str,
        kind: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        sagemaker_ms: int = 0,
    ) -> int:
        return self.prices.cost(
            model,
            route,
            kind,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            sagemaker_ms=sagemaker_ms,
        )

    # -- holds ------------------------------------------------------------------------------
    def hold(
        self,
        account: str,
        request_id: str,
        amount: int,
        ttl_s: float,
        *,
        key_id: str | None = None,
        key_budget: int | None = None,
        budget_period: str | None = None,
    ) -> Hold:
        """Reserve ``amount`` for ``request_id``. Idempotent: the same call returns the same hold.

        Raises PaymentRequired when available (balance - holds) < amount, or when the API key's
        budget (``key_budget`` micro-credits per ``budget_period``: lifetime, day or month; holds
        plus settled charges count against it) cannot cover it; Conflict when the request id
        already holds a different amount or account, or was already settled.
        """
        account = normalize_account(account)
        amount = _amount(amount, "amount")
        if not (0 < ttl_s <= MAX_HOLD_TTL_S):
            raise BadRequest(f"ttl_s must be in (0, {MAX_HOLD_TTL_S}]", code="invalid_ttl")
        now = self._now_ms()
        bkey = None
        if key_budget is not None:
            _amount(key_budget, "key_budget")
            if not key_id:
                raise BadRequest("a key budget needs a key_id", code="invalid_budget")
            try:
                bkey = budget_key(key_id, budget_period, now)
            except ValueError as exc:
                raise BadRequest(str(exc), code="invalid_budget") from None
        hold = Hold(
            request_id=request_id,
            account=account,
            amount=amount,
            state="active",
            created_ms=now,
            expires_ms=now + int(ttl_s * 1000),
            key_id=key_id,
            budget_key=bkey,
            budget_limit=key_budget,
        )
        try:
            self.store.put_hold(hold)
        except HoldExists as exc:
            existing = exc.existing
            if existing.account != account or existing.amount != amount:
                raise Conflict(
                    f"request {request_id} already holds a different amount or account", code="hold_conflict"
                ) from None
            return existing
        except AlreadySettled:
            raise Conflict(f"request {request_id} was already settled", code="already_settled") from None
        except BudgetExceeded as exc:
            raise PaymentRequired(
                f"API key budget exceeded: {exc.used} of {exc.limit} micro-credits used this period, "
                f"this request needs up to {amount}",
                code="key_budget_exceeded",
            ) from None
        except InsufficientFunds as exc:
            raise PaymentRequired(
                f"insufficient balance: {exc.available} micro-credits available, "
                f"this request needs up to {amount}",
                code="insufficient_balance",
            ) from None
        return hold

    def release(self, request_id: str) -> Hold | None:
        """Free an active hold (failed or cancelled work). Idempotent; None when there is no hold."""
        for _ in range(_CHARGE_ATTEMPTS):
            hold = self.store.get_hold(request_id)
            if hold is None:
                return None
            # end_hold is conditioned on the amount read: a lease may shrink between the two steps
            if hold.state != "active" or self.store.end_hold(hold, "released"):
                break
        return self.store.get_hold(request_id)

    def shrink_lease(self, lease_id: str, part: int, token: str) -> bool:
        """Free ``part`` of a lease (``ig3.llm.spend``) that no request will use. Idempotent per token.

        The lease keeps the charges still on their way to the ledger; its own expiry frees
        whatever is left after them. False when the lease already ended or holds less than ``part``.
        """
        part = _amount(part, "part")
        hold = self.store.get_hold(lease_id)
        if hold is None or hold.state != "active":
            return False
        return part == 0 or self.store.shrink_lease(hold, part, token)

    def expire_holds(self, now: float | datetime | None = None, *, limit: int = 500) -> int:
        """Release holds whose TTL passed (abandoned work). Returns how many this call expired.

        ``now``: Unix seconds or an aware datetime; the service's clock when omitted.
        """
        if isinstance(now, datetime):
            now = now.timestamp()
        now_ms = int(now * 1000) if now is not None else self._now_ms()
        expired = 0
        while True:
            batch = self.store.expiring_holds(now_ms, limit)
            if not batch:
                return expired
            progressed = 0
            for hold in batch:
                if self.store.end_hold(hold, "expired"):
                    expired += 1
                    progressed += 1
            if progressed == 0 or len(batch) < limit:
                return expired

    # -- settle -----------------------------------------------------------------------------
    def settle(
        self,
        request_id: str,
        actual_amount: int,
        *,
        account: str | None = None,
        details: dict[str, Any] | None = None,
        lease: str | None = None,
        reserved: int | None = None,
        key_id: str | None = None,
        key_budget: int | None = None,
    ) -> LedgerEntry:
        """Charge a request exactly once and free the rest of its hold.

        ``account`` is needed only when there may be no hold (usage arriving after expiry);
        ``details`` (model, route, tokens, device, ...) go on the ledger entry. ``lease``: the
        request was reserved inside a lease (``ig3.llm.spend``), ``reserved`` being its share;
        the charge (at most that share) is drawn from the lease. ``key_id``/``key_budget``: a
        charge that finds no hold still counts against the key's budget.
        """
        actual_amount = _amount(actual_amount, "actual_amount")
        entry_id = usage_entry_id(request_id)
        existing = self.store.get_entry(entry_id)
        if existing is not None:
            return existing
        bkey = budget_key(key_id, None, self._now_ms()) if key_id and key_budget is not None else None
        if lease is not None:
            charged = self._charge_lease(request_id, actual_amount, lease, reserved, account, details or {})
            if charged is not None:
                return charged
            if account is None:
                raise BadRequest(f"lease {lease} is unknown and no account given", code="no_hold")
            return self._charge_available(
                normalize_account(account), request_id, actual_amount, details or {}, bkey
            )
        hold = self.store.get_hold(request_id)
        if account is not None:
            account = normalize_account(account)
            if hold is not None and hold.account != account:
                raise Conflict(f"request {request_id} is held for another account", code="hold_conflict")
        if hold is not None and hold.state == "active":
            entry = LedgerEntry(
                entry_id=entry_id,
                account=hold.account,
                amount=-min(actual_amount, hold.amount),
                kind="usage",
                ts_ms=self._now_ms(),
                reference=request_id,
                requested_amount=actual_amount,
                details=dict(details or {}),
            )
            try:
                self.store.settle_hold(hold, entry)
                return entry
            except EntryExists as exc:
                return exc.existing
            except HoldNotActive:
                pass  # raced with expiry/release: charge what is available instead
        target = account or (hold.account if hold else None)
        if target is None:
            raise BadRequest(f"no hold for request {request_id} and no account given", code="no_hold")
        return self._charge_available(target, request_id, actual_amount, details or {}, bkey)

    def _charge_lease(
        self,
        request_id: str,
        requested: int,
        lease_id: str,
        reserved: int | None,
        account: str | None,
        details: dict[str, Any],
    ) -> LedgerEntry | None:
        """Draw a request's charge from its lease; None when the lease cannot pay (it expired)."""
        lease = self.store.get_hold(lease_id)
        if lease is None or lease.state != "active":
            return None
        if account is not None and lease.account != normalize_account(account):
            raise Conflict(f"lease {lease_id} belongs to another account", code="hold_conflict")
        cap = requested if reserved is None else min(requested, _amount(reserved, "reserved"))
        entry = LedgerEntry(
            entry_id=usage_entry_id(request_id),
            account=lease.account,
            amount=-cap,
            kind="usage",
            ts_ms=self._now_ms(),
            reference=request_id,
            requested_amount=requested,
            details={**details, "lease": lease_id},
        )
        try:
            self.store.charge_hold(lease, entry)
            return entry
        except EntryExists as exc:
            return exc.existing
        except HoldNotActive:
            return None  # expired, or closed short (a lost settle): charge what is available

    def _charge_available(
        self,
        account: str,
        request_id: str,
        requested: int,
        details: dict[str, Any],
        bkey: str | None = None,
    ) -> LedgerEntry:
        entry_id = usage_entry_id(request_id)
        for _ in range(_CHARGE_ATTEMPTS):
            record = self.store.get_account(account)
            available = max(record.available, 0) if record else 0
            entry = LedgerEntry(
                entry_id=entry_id,
                account=account,
                amount=-min(requested, available),
                kind="usage",
                ts_ms=self._now_ms(),
                reference=request_id,
                requested_amount=requested,
                details={**details, "held": False},
            )
            try:
                self.store.post(entry, require_available=True, budget_key=bkey)
                return entry
            except EntryExists as exc:
                return exc.existing
            except InsufficientFunds:
                continue  # a concurrent hold took some of it: re-read and cap again
        raise Conflict(
            f"could not settle request {request_id}: the balance kept changing", code="settle_contention"
        )

    # -- credits ----------------------------------------------------------------------------
    def credit(
        self, account: str, amount: int, reference: str, *, details: dict[str, Any] | None = None
    ) -> LedgerEntry:
        """Add funds (a deposit). Idempotent per ``reference``: the same reference credits once."""
        account = normalize_account(account)
        amount = _amount(amount, "amount", positive=True)
        entry = LedgerEntry(
            entry_id=deposit_entry_id(reference),
            account=account,
            amount=amount,
            kind="deposit",
            ts_ms=self._now_ms(),
            reference=reference,
            details=dict(details or {}),
        )
        try:
            self.store.post(entry, require_available=False)
        except EntryExists as exc:
            if exc.existing.account != account or exc.existing.amount != amount:
                raise Conflict(
                    f"deposit {reference} was already credited differently", code="deposit_conflict"
                ) from None
            return exc.existing
        return entry

    # -- reads ------------------------------------------------------------------------------
    def key_budget_used(self, key_id: str, period: str | None = None) -> int:
        """Micro-credits an API key has reserved or spent in the current period."""
        return self.store.budget_used(budget_key(key_id, period, self._now_ms()))

    def balance(self, account: str) -> Balance:
        account = normalize_account(account)
        record = self.store.get_account(account) or AccountRecord(account, 0, 0, 0)
        return Balance(account=account, total=record.balance, held=record.held, available=record.available)

    def usage(
        self,
        account: str,
        *,
        since_ms: int | None = None,
        until_ms: int | None = None,
        model: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> tuple[list[LedgerEntry], str | None]:
        return self.store.list_entries(
            normalize_account(account),
            since_ms=since_ms,
            until_ms=until_ms,
            model=model,
            after=after,
            limit=limit,
        )
