"""billing function: UsageRecorded and RagStorageChanged events (EventBridge rules -> SQS
``billing``) -> the ledger (storage: ``ig3.billing.storage``).

Each record is settled or released on its own; a record that fails is reported in
``batchItemFailures`` (Powertools BatchProcessor) and comes back, the rest are deleted.
Idempotent per request id (the ledger entry is a conditional put; a storage interval's id is its
collection + start), so redelivery is harmless.
"""

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from ig3.billing.storage import handle_billing_record
from ig3.billing.wiring import billing_service
from ig3.observability import logger, metrics, tracer
from ig3.sqs_batch import handle_sqs_batch


def _record(record: SQSRecord) -> dict:
    result = handle_billing_record(billing_service(), record.body)
    metrics.add_metric(name="UsageSettled", unit="Count", value=1)
    return result


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    return handle_sqs_batch(event, context, _record)
