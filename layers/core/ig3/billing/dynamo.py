"""DynamoDB adapter of the billing store: every guard is a condition inside one TransactWriteItems.

Tables (declared in ``ig3.topology``):
- ``accounts`` (pk ``account``): ``balance`` (the ledger sum), ``held`` (sum of active holds),
  ``available`` (= balance - held; stored so that ``available >= :amount`` can be the guard —
  condition expressions cannot subtract).
- ``ledger`` (pk ``entry_id``: ``usage#<request>``, ``deposit#<reference>``): immutable, written
  with ``attribute_not_exists(entry_id)``. GSIs ``by_account`` (account, ts_key) for usage
  listings and ``by_device`` (device, ts_key) for rewards.
- ``holds`` (pk ``request_id``): ``state`` active -> settled | released | expired, each move
  conditioned on ``state = active``. Active holds carry ``active_shard`` (8 shards, so the
  sparse GSI ``by_expiry`` has no single hot partition) and ``expires_key``; both are removed
  when the hold ends, so the index only ever lists live holds. ``expires_at`` is a TTL for
  deleting finished holds a week later (TTL deletes are lazy, so expiry itself never relies on it).
  A *lease* (``ig3.llm.spend``) is a hold whose ``amount`` shrinks: by each request charged to it
  (``charge_hold``) and by the parts given back (``shrink_lease``, tokens kept in ``shrinks`` so a
  repeat is a no-op); ending a hold is therefore conditioned on the amount it frees.

A transaction that is cancelled tells which condition failed (CancellationReasons, in item
order); that is mapped to the store's domain exceptions. Reads that feed decisions are
strongly consistent; index reads (expiry sweep, listings) are eventually consistent, which is
safe because every write they lead to re-checks its own condition.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

from ig3.billing.models import BUDGET_PREFIX, AccountRecord, Hold, LedgerEntry, usage_entry_id
from ig3.billing.store import (
    AlreadySettled,
    BudgetExceeded,
    EntryExists,
    HoldExists,
    HoldNotActive,
    InsufficientFunds,
)

EXPIRY_SHARDS = 8
FINISHED_HOLD_RETENTION_S = 7 * 24 * 3600
_MAX_KEY = "9" * 16


def _n(value: int) -> dict[str, str]:
    return {"N": str(int(value))}


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _int(item: dict[str, Any], name: str, default: int = 0) -> int:
    v = item.get(name)
    return int(v["N"]) if v else default


def _str(item: dict[str, Any], name: str) -> str | None:
    v = item.get(name)
    return v["S"] if v else None


def _ms_key(ms: int) -> str:
    return f"{ms:015d}"


def _shard(request_id: str) -> str:
    return f"active#{zlib.crc32(request_id.encode()) % EXPIRY_SHARDS}"


def _reasons(exc: ClientError) -> list[str]:
    return [r.get("Code", "None") for r in exc.response.get("CancellationReasons", [])]


def _cancelled(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "TransactionCanceledException"


class DynamoBillingStore:
    def __init__(self, accounts_table: str, ledger_table: str, holds_table: str, client: Any | None = None):
        self.accounts_table = accounts_table
        self.ledger_table = ledger_table
        self.holds_table = holds_table
        self._client = client

    @classmethod
    def from_env(cls) -> DynamoBillingStore:
        from ig3.config import table_name

        return cls(table_name("accounts"), table_name("ledger"), table_name("holds"))

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("dynamodb")
        return self._client

    # -- encoding ---------------------------------------------------------------------------
    def _hold_item(self, hold: Hold) -> dict[str, Any]:
        item = {
            "request_id": _s(hold.request_id),
            "account": _s(hold.account),
            "amount": _n(hold.amount),
            "state": _s(hold.state),
            "created_ms": _n(hold.created_ms),
            "expires_ms": _n(hold.expires_ms),
            "expires_at": _n(hold.expires_ms // 1000 + FINISHED_HOLD_RETENTION_S),
        }
        if hold.state == "active":
            item["active_shard"] = _s(_shard(hold.request_id))
            item["expires_key"] = _s(_ms_key(hold.expires_ms))
        if hold.key_id:
            item["key_id"] = _s(hold.key_id)
        if hold.budget_key:
            item["budget_key"] = _s(hold.budget_key)
            if hold.budget_limit is not None:
                item["budget_limit"] = _n(hold.budget_limit)
        return item

    @staticmethod
    def _hold(item: dict[str, Any]) -> Hold:
        return Hold(
            request_id=item["request_id"]["S"],
            account=item["account"]["S"],
            amount=_int(item, "amount"),
            state=item["state"]["S"],
            created_ms=_int(item, "created_ms"),  # type: ignore[arg-type]
            expires_ms=_int(item, "expires_ms"),
            key_id=_str(item, "key_id"),
            budget_key=_str(item, "budget_key"),
            budget_limit=_int(item, "budget_limit") if "budget_limit" in item else None,
        )

    @staticmethod
    def _entry_item(entry: LedgerEntry) -> dict[str, Any]:
        item = {
            "entry_id": _s(entry.entry_id),
            "account": _s(entry.account),
            "amount": _n(entry.amount),
            "kind": _s(entry.kind),
            "ts_ms": _n(entry.ts_ms),
            "ts_key": _s(entry.ts_key),
            "reference": _s(entry.reference),
            "details": _s(json.dumps(entry.details, sort_keys=True)),
        }
        if entry.requested_amount is not None:
            item["requested_amount"] = _n(entry.requested_amount)
        # Top-level copies for the indexes and filters.
        for name in ("model", "device"):
            value = entry.details.get(name)
            if isinstance(value, str) and value:
                item[name] = _s(value)
        return item

    @staticmethod
    def _entry(item: dict[str, Any]) -> LedgerEntry:
        requested = item.get("requested_amount")
        return LedgerEntry(
            entry_id=item["entry_id"]["S"],
            account=item["account"]["S"],
            amount=_int(item, "amount"),
            kind=item["kind"]["S"],
            ts_ms=_int(item, "ts_ms"),  # type: ignore[arg-type]
            reference=item["reference"]["S"],
            requested_amount=int(requested["N"]) if requested else None,
            details=json.loads(item.get("details", {}).get("S", "{}")),
        )

    @staticmethod
    def _account(item: dict[str, Any]) -> AccountRecord:
        return AccountRecord(
            account=item["account"]["S"],
            balance=_int(item, "balance"),
            held=_int(item, "held"),
            available=_int(item, "available"),
        )

    # -- writes -----------------------------------------------------------------------------
    def put_hold(self, hold: Hold) -> None:
        items = [
            {
                "Put": {
                    "TableName": self.holds_table,
                    "Item": self._hold_item(hold),
                    "ConditionExpression": "attribute_not_exists(request_id)",
                }
            },
            {
                "ConditionCheck": {
                    "TableName": self.ledger_table,
                    "Key": {"entry_id": _s(usage_entry_id(hold.request_id))},
                    "ConditionExpression": "attribute_not_exists(entry_id)",
                }
            },
            {
                "Update": {
                    "TableName": self.accounts_table,
                    "Key": {"account": _s(hold.account)},
                    "UpdateExpression": "ADD held :a, available :neg, balance :zero",
                    "ExpressionAttributeValues": {
                        ":a": _n(hold.amount),
                        ":neg": _n(-hold.amount),
                        ":zero": _n(0),
                    },
                }
            },
        ]
        if hold.amount > 0:  # a zero hold needs no funds (and may be an account's first item)
            items[2]["Update"]["ConditionExpression"] = "available >= :a"
        if hold.budget_key is not None and hold.budget_limit is not None:
            # The key's counter (reserved + spent this period) lives in the accounts table under
            # "budget#<key>#<period>"; the guard is reserved <= limit - amount, in the same transaction.
            if hold.amount > hold.budget_limit:
                raise BudgetExceeded(self.budget_used(hold.budget_key), hold.budget_limit)
            items.append(
                {
                    "Update": {
                        "TableName": self.accounts_table,
                        "Key": {"account": _s(hold.budget_key)},
                        "UpdateExpression": "ADD reserved :a",
                        "ConditionExpression": "attribute_not_exists(reserved) OR reserved <= :cap",
                        "ExpressionAttributeValues": {
                            ":a": _n(hold.amount),
                            ":cap": _n(hold.budget_limit - hold.amount),
                        },
                    }
                }
            )
        try:
            self.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if not _cancelled(exc):
                raise
            reasons = _reasons(exc)
            if reasons[:1] == ["ConditionalCheckFailed"]:
                existing = self.get_hold(hold.request_id)
                if existing is not None:
                    raise HoldExists(existing) from None
            if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                raise AlreadySettled(hold.request_id) from None
            if len(reasons) > 2 and reasons[2] == "ConditionalCheckFailed":
                acct = self.get_account(hold.account)
                raise InsufficientFunds(acct.available if acct else 0) from None
            if len(reasons) > 3 and reasons[3] == "ConditionalCheckFailed":
                raise BudgetExceeded(
                    self.budget_used(hold.budget_key or ""), hold.budget_limit or 0
                ) from None
            raise

    def settle_hold(self, hold: Hold, entry: LedgerEntry) -> None:
        items = [
            {
                "Update": {
                    "TableName": self.holds_table,
                    "Key": {"request_id": _s(hold.request_id)},
                    "UpdateExpression": (
                        "SET #st = :settled, settled_ms = :ts REMOVE active_shard, expires_key"
                    ),
                    "ConditionExpression": "#st = :active",
                    "ExpressionAttributeNames": {"#st": "state"},
                    "ExpressionAttributeValues": {
                        ":settled": _s("settled"),
                        ":active": _s("active"),
                        ":ts": _n(entry.ts_ms),
                    },
                }
            },
            {
                "Put": {
                    "TableName": self.ledger_table,
                    "Item": self._entry_item(entry),
                    "ConditionExpression": "attribute_not_exists(entry_id)",
                }
            },
            {
                "Update": {
                    "TableName": self.accounts_table,
                    "Key": {"account": _s(hold.account)},
                    "UpdateExpression": "ADD balance :amt, held :unheld, available :freed",
                    "ExpressionAttributeValues": {
                        ":amt": _n(entry.amount),
                        ":unheld": _n(-hold.amount),
                        ":freed": _n(hold.amount + entry.amount),
                    },
                }
            },
        ]
        if hold.budget_key is not None:  # the reservation becomes the actual spend
            items.append(
                {
                    "Update": {
                        "TableName": self.accounts_table,
                        "Key": {"account": _s(hold.budget_key)},
                        "UpdateExpression": "ADD reserved :d",
                        "ExpressionAttributeValues": {":d": _n(-hold.amount - entry.amount)},
                    }
                }
            )
        self._write_against_hold(items, hold, entry)

    def _write_against_hold(self, items: list[dict], hold: Hold, entry: LedgerEntry) -> None:
        """One transaction whose item 0 conditions on the active hold and item 1 writes the entry."""
        try:
            self.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if not _cancelled(exc):
                raise
            reasons = _reasons(exc)
            if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                existing = self.get_entry(entry.entry_id)
                if existing is not None:
                    raise EntryExists(existing) from None
            if reasons[:1] == ["ConditionalCheckFailed"]:
                raise HoldNotActive(hold.request_id) from None
            raise

    def end_hold(self, hold: Hold, state: str) -> bool:
        items = [
            {
                "Update": {
                    "TableName": self.holds_table,
                    "Key": {"request_id": _s(hold.request_id)},
                    "UpdateExpression": "SET #st = :state REMOVE active_shard, expires_key",
                    # amount: a lease shrinks as requests are charged to it; never free a stale amount
                    "ConditionExpression": "#st = :active AND amount = :amt",
                    "ExpressionAttributeNames": {"#st": "state"},
                    "ExpressionAttributeValues": {
                        ":state": _s(state),
                        ":active": _s("active"),
                        ":amt": _n(hold.amount),
                    },
                }
            },
            {
                "Update": {
                    "TableName": self.accounts_table,
                    "Key": {"account": _s(hold.account)},
                    "UpdateExpression": "ADD held :neg, available :a",
                    "ExpressionAttributeValues": {":neg": _n(-hold.amount), ":a": _n(hold.amount)},
                }
            },
        ]
        if hold.budget_key is not None:
            items.append(
                {
                    "Update": {
                        "TableName": self.accounts_table,
                        "Key": {"account": _s(hold.budget_key)},
                        "UpdateExpression": "ADD reserved :neg",
                        "ExpressionAttributeValues": {":neg": _n(-hold.amount)},
                    }
                }
            )
        try:
            self.client.transact_write_items(TransactItems=items)
            return True
        except ClientError as exc:
            if _cancelled(exc) and _reasons(exc)[:1] == ["ConditionalCheckFailed"]:
                return False
            raise

    def post(self, entry: LedgerEntry, *, require_available: bool, budget_key: str | None = None) -> None:
        update: dict[str, Any] = {
            "TableName": self.accounts_table,
            "Key": {"account": _s(entry.account)},
            "UpdateExpression": "ADD balance :a, available :a, held :zero",
            "ExpressionAttributeValues": {":a": _n(entry.amount), ":zero": _n(0)},
        }
        if require_available and entry.amount < 0:
            update["ConditionExpression"] = "available >= :need"
            update["ExpressionAttributeValues"][":need"] = _n(-entry.amount)
        items = [
            {
                "Put": {
                    "TableName": self.ledger_table,
                    "Item": self._entry_item(entry),
                    "ConditionExpression": "attribute_not_exists(entry_id)",
                }
            },
            {"Update": update},
        ]
        if budget_key is not None and entry.amount < 0:  # spend without a hold counts too
            items.append(
                {
                    "Update": {
                        "TableName": self.accounts_table,
                        "Key": {"account": _s(budget_key)},
                        "UpdateExpression": "ADD reserved :spent",
                        "ExpressionAttributeValues": {":spent": _n(-entry.amount)},
                    }
                }
            )
        try:
            self.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if not _cancelled(exc):
                raise
            reasons = _reasons(exc)
            if reasons[:1] == ["ConditionalCheckFailed"]:
                existing = self.get_entry(entry.entry_id)
                if existing is not None:
                    raise EntryExists(existing) from None
            if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                acct = self.get_account(entry.account)
                raise InsufficientFunds(acct.available if acct else 0) from None
            raise

    def charge_hold(self, hold: Hold, entry: LedgerEntry) -> None:
        charge = -entry.amount
        items = [
            {
                "Update": {
                    "TableName": self.holds_table,
                    "Key": {"request_id": _s(hold.request_id)},
                    "UpdateExpression": "ADD amount :neg",
                    "ConditionExpression": "#st = :active AND amount >= :c",
                    "ExpressionAttributeNames": {"#st": "state"},
                    "ExpressionAttributeValues": {
                        ":neg": _n(-charge),
                        ":c": _n(charge),
                        ":active": _s("active"),
                    },
                }
            },
            {
                "Put": {
                    "TableName": self.ledger_table,
                    "Item": self._entry_item(entry),
                    "ConditionExpression": "attribute_not_exists(entry_id)",
                }
            },
            {
                "Update": {
                    "TableName": self.accounts_table,
                    "Key": {"account": _s(hold.account)},
                    "UpdateExpression": "ADD balance :neg, held :neg",
                    "ExpressionAttributeValues": {":neg": _n(-charge)},
                }
            },
        ]
        self._write_against_hold(items, hold, entry)

    def shrink_lease(self, hold: Hold, part: int, token: str) -> bool:
        items = [
            {
                "Update": {
                    "TableName": self.holds_table,
                    "Key": {"request_id": _s(hold.request_id)},
                    # the token set makes a repeated shrink (a retried call, a lost reply) a no-op
                    "UpdateExpression": "ADD amount :neg, shrinks :toks",
                    "ConditionExpression": "#st = :active AND amount >= :p AND NOT contains(shrinks, :tok)",
                    "ExpressionAttributeNames": {"#st": "state"},
                    "ExpressionAttributeValues": {
                        ":neg": _n(-part),
                        ":p": _n(part),
                        ":active": _s("active"),
                        ":toks": {"SS": [token]},
                        ":tok": _s(token),
                    },
                }
            },
            {
                "Update": {
                    "TableName": self.accounts_table,
                    "Key": {"account": _s(hold.account)},
                    "UpdateExpression": "ADD held :neg, available :p",
                    "ExpressionAttributeValues": {":neg": _n(-part), ":p": _n(part)},
                }
            },
        ]
        if hold.budget_key is not None:
            items.append(
                {
                    "Update": {
                        "TableName": self.accounts_table,
                        "Key": {"account": _s(hold.budget_key)},
                        "UpdateExpression": "ADD reserved :neg",
                        "ExpressionAttributeValues": {":neg": _n(-part)},
                    }
                }
            )
        try:
            self.client.transact_write_items(TransactItems=items)
            return True
        except ClientError as exc:
            if _cancelled(exc) and _reasons(exc)[:1] == ["ConditionalCheckFailed"]:
                item = self.client.get_item(
                    TableName=self.holds_table, Key={"request_id": _s(hold.request_id)}, ConsistentRead=True
                ).get("Item") or {}
                return token in item.get("shrinks", {}).get("SS", [])  # True: this shrink was applied
            raise

    # -- reads ------------------------------------------------------------------------------
    def get_hold(self, request_id: str) -> Hold | None:
        item = self.client.get_item(
            TableName=self.holds_table, Key={"request_id": _s(request_id)}, ConsistentRead=True
        ).get("Item")
        return self._hold(item) if item else None

    def get_entry(self, entry_id: str) -> LedgerEntry | None:
        item = self.client.get_item(
            TableName=self.ledger_table, Key={"entry_id": _s(entry_id)}, ConsistentRead=True
        ).get("Item")
        return self._entry(item) if item else None

    def get_account(self, account: str) -> AccountRecord | None:
        item = self.client.get_item(
            TableName=self.accounts_table, Key={"account": _s(account)}, ConsistentRead=True
        ).get("Item")
        return self._account(item) if item else None

    def budget_used(self, budget_key: str) -> int:
        item = self.client.get_item(
            TableName=self.accounts_table, Key={"account": _s(budget_key)}, ConsistentRead=True
        ).get("Item")
        return _int(item, "reserved") if item else 0

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
        lo = _ms_key(since_ms) if since_ms is not None else "0"
        hi = _ms_key(until_ms) if until_ms is not None else _MAX_KEY  # "T" < "T#id": until is exclusive
        args: dict[str, Any] = {
            "TableName": self.ledger_table,
            "IndexName": "by_account",
            "ScanIndexForward": False,
            "KeyConditionExpression": "account = :acct AND ts_key BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {":acct": _s(account), ":lo": _s(lo), ":hi": _s(hi)},
        }
        if model is not None:
            args["FilterExpression"] = "model = :model"
            args["ExpressionAttributeValues"][":model"] = _s(model)
        if after is not None:
            args["ExclusiveStartKey"] = {
                "account": _s(account),
                "ts_key": _s(after),
                "entry_id": _s(after.split("#", 1)[1]),
            }
        out: list[LedgerEntry] = []
        while True:
            args["Limit"] = limit + 1 - len(out)  # one extra tells whether another page exists
            resp = self.client.query(**args)
            out.extend(self._entry(i) for i in resp.get("Items", []))
            if len(out) > limit:
                page = out[:limit]
                return page, page[-1].ts_key
            if "LastEvaluatedKey" not in resp:
                return out, None
            args["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def entries_for_device(self, device: str, *, since_ms: int, until_ms: int) -> Iterator[LedgerEntry]:
        args: dict[str, Any] = {
            "TableName": self.ledger_table,
            "IndexName": "by_device",
            "KeyConditionExpression": "device = :d AND ts_key BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {
                ":d": _s(device),
                ":lo": _s(_ms_key(since_ms)),
                ":hi": _s(_ms_key(until_ms)),
            },
        }
        while True:
            resp = self.client.query(**args)
            for item in resp.get("Items", []):
                yield self._entry(item)
            if "LastEvaluatedKey" not in resp:
                return
            args["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def expiring_holds(self, now_ms: int, limit: int) -> list[Hold]:
        out: list[Hold] = []
        for shard in range(EXPIRY_SHARDS):
            args: dict[str, Any] = {
                "TableName": self.holds_table,
                "IndexName": "by_expiry",
                "KeyConditionExpression": "active_shard = :s AND expires_key <= :now",
                "ExpressionAttributeValues": {":s": _s(f"active#{shard}"), ":now": _s(_ms_key(now_ms))},
                "Limit": limit,
            }
            resp = self.client.query(**args)
            out.extend(
                self._hold(i) for i in resp.get("Items", []) if i.get("state", {}).get("S") == "active"
            )
            if len(out) >= limit:
                break
        return sorted(out, key=lambda h: h.expires_ms)[:limit]

    def _scan(self, table: str, **extra: Any) -> Iterator[dict[str, Any]]:
        args: dict[str, Any] = {"TableName": table, "ConsistentRead": True, **extra}
        while True:
            resp = self.client.scan(**args)
            yield from resp.get("Items", [])
            if "LastEvaluatedKey" not in resp:
                return
            args["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def iter_accounts(self) -> Iterator[AccountRecord]:
        # Budget counters share the table; they are limits, not money, so they are not accounts.
        return (
            self._account(i)
            for i in self._scan(self.accounts_table)
            if not i["account"]["S"].startswith(BUDGET_PREFIX)
        )

    def iter_entries(self) -> Iterator[LedgerEntry]:
        return (self._entry(i) for i in self._scan(self.ledger_table))

    def iter_active_holds(self) -> Iterator[Hold]:
        return (
            self._hold(i)
            for i in self._scan(
                self.holds_table,
                FilterExpression="#st = :active",
                ExpressionAttributeNames={"#st": "state"},
                ExpressionAttributeValues={":active": _s("active")},
            )
        )
