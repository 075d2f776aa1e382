"""presence function: DeviceOnline / DeviceOffline (EventBridge rule -> SQS ``presence``) -> uptime records.

Each transition is one idempotent put keyed by (device, time, kind); the rewards job reads
them as the devices' uptime. Partial batch failures are reported per record.
"""

from functools import lru_cache

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from ig3.billing.presence import DynamoPresenceStore, parse_presence_message
from ig3.observability import logger, metrics, tracer
from ig3.sqs_batch import handle_sqs_batch


@lru_cache(maxsize=1)
def _store() -> DynamoPresenceStore:
    return DynamoPresenceStore.from_env()


def _record(record: SQSRecord) -> None:
    device, ts_ms, kind = parse_presence_message(record.body)
    _store().record(device, ts_ms, kind)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    return handle_sqs_batch(event, context, _record)
