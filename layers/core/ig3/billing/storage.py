"""RAG storage metering: ``RagStorageChanged`` events (EventBridge -> SQS ``billing``) -> the ledger.

Storage is a quantity held over time, not a request, so it cannot be priced from a single
"vectors now" figure. The RAG registry therefore closes a collection's storage interval
atomically with every change of its vector count — and hourly for collections that do not change
(``ig3.rag.registry``) — and each event carries the interval it closed: ``vector_bytes`` held from
``from_ms`` to ``to_ms``. Consecutive intervals tile time without gaps or overlaps.

Each interval is priced on its own — ``vector_bytes x milliseconds x storage.vector_gib_month /
(GiB x 30 days)``, exact in ``Decimal`` and rounded up once to a whole micro-credit, like a
request — and charged through ``BillingService.settle`` under the request id
``storage:<collection uid>:<from_ms>``, which no other interval shares. The ledger entry is keyed
by it, so a redelivered or re-published event charges nothing twice. There is no hold (nobody can
reserve for storage in advance): the charge is capped at what the account has available, and the
entry records the requested amount, as for late usage.

Events from before intervals existed (no ``interval``), and intervals that cost nothing (no
vectors, zero length, a zero rate), write no entry.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from ig3.billing.models import LedgerEntry, normalize_account
from ig3.billing.pricing import PriceBook
from ig3.billing.service import BillingService
from ig3.billing.usage import DETAIL_TYPE as USAGE_DETAIL_TYPE
from ig3.billing.usage import MalformedUsageEvent, handle_usage_record

DETAIL_TYPE = "RagStorageChanged"
GIB = Decimal(2**30)
MONTH_MS = Decimal(30 * 24 * 3600 * 1000)


class StorageInterval(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    from_ms: StrictInt = Field(ge=0)
    to_ms: StrictInt = Field(ge=0)
    vector_bytes: StrictInt = Field(ge=0)


class RagStorageChanged(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    account: str
    collection: str = Field(max_length=64)
    collection_uid: str = Field(pattern=r"^[0-9a-f]{32}$")
    store: str = Field(max_length=16)
    interval: StorageInterval | None = None
    event_id: str | None = None

    @field_validator("account")
    @classmethod
    def _account(cls, v: str) -> str:
        return normalize_account(v)

    @property
    def request_id(self) -> str:
        assert self.interval is not None
        return f"storage:{self.collection_uid}:{self.interval.from_ms}"


def storage_cost(prices: PriceBook, vector_bytes: int, duration_ms: int) -> int:
    """Micro-credits for ``vector_bytes`` held ``duration_ms``: exact, rounded up once."""
    if vector_bytes <= 0 or duration_ms <= 0:
        return 0
    exact = Decimal(vector_bytes) * Decimal(duration_ms) * prices.storage_vector_gib_month / (GIB * MONTH_MS)
    return int(exact.to_integral_value(rounding=ROUND_CEILING))


def apply_storage(service: BillingService, event: RagStorageChanged) -> LedgerEntry | None:
    iv = event.interval
    if iv is None:
        return None
    cost = storage_cost(service.prices, iv.vector_bytes, iv.to_ms - iv.from_ms)
    if cost == 0:
        return None
    return service.settle(
        event.request_id,
        cost,
        account=event.account,
        details={
            "model": f"rag-storage:{event.store}",
            "usage_kind": "storage",
            "collection": event.collection,
            "vector_bytes": iv.vector_bytes,
            "from_ms": iv.from_ms,
            "to_ms": iv.to_ms,
            **({"event_id": event.event_id} if event.event_id else {}),
        },
    )


def parse_storage_detail(detail: Any) -> RagStorageChanged:
    try:
        return RagStorageChanged.model_validate(detail)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors()[:5])
        raise MalformedUsageEvent(f"invalid RagStorageChanged detail ({fields})") from None


def handle_billing_record(service: BillingService, body: str | bytes) -> dict[str, Any]:
    """One message of the ``billing`` queue: a ``RagStorageChanged`` envelope, else usage."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedUsageEvent("message body is not JSON") from None
    if isinstance(doc, dict) and doc.get("detail-type") == DETAIL_TYPE:
        event = parse_storage_detail(doc.get("detail"))
        entry = apply_storage(service, event)
        rid = event.request_id if event.interval else None
        return {"request_id": rid, "charged": -entry.amount if entry else 0}
    if isinstance(doc, dict) and "detail" in doc and doc.get("detail-type") != USAGE_DETAIL_TYPE:
        raise MalformedUsageEvent(f"unexpected detail-type {doc.get('detail-type')!r}")
    return handle_usage_record(service, body)
