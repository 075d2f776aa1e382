"""audit_outcomes function: AuditCompleted / IntegrityFault (EventBridge rule -> SQS ``audit_outcomes``)
-> one item per audit or fault in the ``audit_outcomes`` table, which the epoch rewards read.

First write wins (``attribute_not_exists``): redelivery writes nothing new. A malformed event
is dropped (counted), never retried forever.
"""

from functools import lru_cache

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from ig3.audit.outcomes import DynamoOutcomeStore, parse_outcome_message
from ig3.observability import logger, metrics, tracer
from ig3.sqs_batch import handle_sqs_batch


@lru_cache(maxsize=1)
def _store() -> DynamoOutcomeStore:
    return DynamoOutcomeStore.from_env()


def _record(record: SQSRecord) -> None:
    try:
        row = parse_outcome_message(record.body)
    except ValueError:
        metrics.add_metric(name="AuditOutcomesMalformed", unit="Count", value=1)
        logger.warning("malformed audit outcome dropped")
        return
    _store().record(row)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    return handle_sqs_batch(event, context, _record)
