"""Billing records and the UsageRecorded event. Pure (pydantic + stdlib).

Amounts are ``int`` micro-credits. Ledger amounts are signed: deposits and other credits are
positive, usage charges negative, so an account's balance is exactly the sum of its entries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

HoldState = Literal["active", "settled", "released", "expired"]
EntryKind = Literal["usage", "deposit", "adjustment"]
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_.:#-]{1,128}$")


def normalize_account(account: str) -> str:
    """Wallet addresses compare case-insensitively (EIP-55 is only a checksum): store lowercase."""
    account = account.strip()
    if not account:
        raise ValueError("account must not be empty")
    return account.lower() if account.startswith(("0x", "0X")) else account


# Prompt tokens are not known before a model's tokenizer sees the text: a hold reserves a generous
# upper bound (>= 1 token per 3 characters + a chat template) and the settle charges the exact count.
CHARS_PER_TOKEN_BOUND = 3
TEMPLATE_TOKENS = 32


def prompt_token_bound(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN_BOUND) + TEMPLATE_TOKENS


def usage_entry_id(request_id: str) -> str:
    return f"usage#{request_id}"


def deposit_entry_id(reference: str) -> str:
    return f"deposit#{reference}"


def ts_key(ts_ms: int, entry_id: str) -> str:
    """Sort key for time-ordered listings: fixed-width millis, then the id to break ties."""
    return f"{ts_ms:015d}#{entry_id}"


@dataclass(frozen=True)
class Hold:
    request_id: str
    account: str
    amount: int
    state: HoldState
    created_ms: int
    expires_ms: int
    key_id: str | None = None
    # Per-key budget this hold counts against: (budget item id, limit in micro-credits).
    budget_key: str | None = None
    budget_limit: int | None = None


BUDGET_PREFIX = "budget#"


def budget_key(key_id: str, period: str | None, now_ms: int) -> str:
    """The budget counter for an API key in a period: lifetime, per UTC day or per UTC month."""
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(now_ms / 1000, UTC)
    if period in (None, "lifetime"):
        suffix = "lifetime"
    elif period == "day":
        suffix = when.strftime("d%Y%m%d")
    elif period == "month":
        suffix = when.strftime("m%Y%m")
    else:
        raise ValueError("budget period must be lifetime, day or month")
    return f"{BUDGET_PREFIX}{key_id}#{suffix}"


@dataclass(frozen=True)
class LedgerEntry:
    entry_id: str
    account: str
    amount: int  # signed micro-credits
    kind: EntryKind
    ts_ms: int
    reference: str  # request id, deposit reference, ...
    requested_amount: int | None = None  # usage: the priced cost before any cap
    details: dict[str, Any] = field(default_factory=dict)  # model, route, tokens, device, ...

    @property
    def ts_key(self) -> str:
        return ts_key(self.ts_ms, self.entry_id)


@dataclass(frozen=True)
class Balance:
    account: str
    total: int  # the ledger sum
    held: int  # reserved by active holds
    available: int  # total - held: what a new hold may take

    def as_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "total": self.total,
            "held": self.held,
            "available": self.available,
            "unit": "micro-credit",
        }


@dataclass(frozen=True)
class AccountRecord:
    account: str
    balance: int
    held: int
    available: int


class UsageRecorded(BaseModel):
    """detail of the ``UsageRecorded`` event (source "ig3"): one per completed or failed request."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    request_id: str
    account: str
    key_id: str | None = None
    model: str = Field(min_length=1, max_length=200)
    route: Literal["edge", "cloud"]
    kind: Literal["chat", "completion", "embedding", "task"]
    device: str | None = Field(default=None, max_length=200)
    prompt_tokens: StrictInt = Field(default=0, ge=0)
    completion_tokens: StrictInt = Field(default=0, ge=0)
    duration_ms: StrictInt | None = Field(default=None, ge=0)
    sagemaker_ms: StrictInt | None = Field(default=None, ge=0)
    status: Literal["completed", "failed"]
    event_id: str | None = None
    region: str | None = Field(default=None, max_length=64)  # where the request came from (fairness)
    # Reserved inside a lease (ig3.llm.spend): the lease's hold id and this request's share of it.
    lease: str | None = Field(default=None, max_length=128)
    reserved: StrictInt | None = Field(default=None, ge=0)
    key_budget: StrictInt | None = Field(default=None, ge=0)  # the API key's budget, if it has one

    @field_validator("request_id")
    @classmethod
    def _request_id(cls, v: str) -> str:
        if not REQUEST_ID_RE.match(v):
            raise ValueError("request_id must be 1-128 of [A-Za-z0-9_.:#-]")
        return v

    @field_validator("account")
    @classmethod
    def _account(cls, v: str) -> str:
        return normalize_account(v)

    def details(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": self.model,
            "route": self.route,
            "usage_kind": self.kind,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        for k in ("key_id", "device", "duration_ms", "sagemaker_ms", "region", "event_id"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d
