"""The billing function's logic: UsageRecorded events (EventBridge -> SQS) -> settle or release.

One event per request. ``completed`` -> price it from the price book and settle it (exactly
once: the ledger entry is keyed by request id, so a duplicate or a redelivery returns the
entry already written). ``failed`` -> never billed, it only releases the request's hold.

Out-of-order delivery is harmless: a duplicate ``completed`` after the first is a no-op; a
``failed`` after a ``completed`` finds the hold already settled and changes nothing; a
``completed`` after a ``failed`` (a retried request that then succeeded under the same id)
still bills once, against what is available, since its hold was released.

Malformed events raise, so the record is reported as a batch item failure and ends in the
DLQ after the queue's receive count — visible to operators, never silently dropped.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from ig3.billing.models import LedgerEntry, UsageRecorded
from ig3.billing.service import BillingService

DETAIL_TYPE = "UsageRecorded"


class MalformedUsageEvent(ValueError):
    pass


def parse_usage_message(body: str | bytes) -> UsageRecorded:
    """An SQS body holding an EventBridge envelope (``detail-type``, ``detail``) or a bare detail."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedUsageEvent("message body is not JSON") from None
    if not isinstance(doc, dict):
        raise MalformedUsageEvent("message body is not a JSON object")
    if "detail" in doc:
        if doc.get("detail-type") != DETAIL_TYPE:
            raise MalformedUsageEvent(f"unexpected detail-type {doc.get('detail-type')!r}")
        doc = doc["detail"]
    try:
        return UsageRecorded.model_validate(doc)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors()[:5])
        raise MalformedUsageEvent(f"invalid UsageRecorded detail ({fields})") from None


def apply_usage(service: BillingService, event: UsageRecorded) -> LedgerEntry | None:
    """Settle a completed request (returns its one ledger entry) or release a failed one's hold."""
    if event.status == "failed":
        service.release(event.request_id)
        return None
    cost = service.cost(
        event.model,
        event.route,
        event.kind,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        sagemaker_ms=event.sagemaker_ms or 0,
    )
    return service.settle(
        event.request_id,
        cost,
        account=event.account,
        details=event.details(),
        lease=event.lease,
        reserved=event.reserved,
        key_id=event.key_id,
        key_budget=event.key_budget,
    )


def handle_usage_record(service: BillingService, body: str | bytes) -> dict[str, Any]:
    event = parse_usage_message(body)
    entry = apply_usage(service, event)
    return {"request_id": event.request_id, "charged": -entry.amount if entry else 0}
