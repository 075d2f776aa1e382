"""SQS-triggered handlers: Powertools batch processing with partial batch failures.

Each record is handled alone; a record that raises is reported in ``batchItemFailures`` and
comes back after its visibility timeout (then the DLQ after ``maxReceiveCount``), while the
rest of the batch is deleted. Handlers must be idempotent (SQS is at-least-once).

With ``events`` (an ``ig3.events.DeferredEventPublisher``) the domain events of the whole batch
are published together at its end — before the handler returns, i.e. before Lambda deletes any
message — and a message whose events EventBridge did not take is reported failed too.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord


def handle_sqs_batch(event: dict[str, Any], context: Any, record_handler: Callable[[SQSRecord], Any],
                     *, events: Any | None = None) -> dict:
    processor = BatchProcessor(event_type=EventType.SQS)
    if events is None:
        return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                        context=context)

    def owned(record: SQSRecord) -> Any:
        with events.owned_by(record.message_id):
            return record_handler(record)

    with events.collecting():
        try:
            response = process_partial_response(event=event, record_handler=owned, processor=processor,
                                                context=context)
        finally:
            # Also when every record failed (Powertools raises then): what was written is announced.
            unpublished = events.flush()
    if unpublished:
        failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])} | unpublished
        response = {"batchItemFailures": [{"itemIdentifier": i} for i in sorted(failed)]}
    return response
