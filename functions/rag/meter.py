"""rag_meter function (scheduled, hourly): close every collection's open storage interval.

Changes close their own intervals as they happen; this covers vectors that sit unchanged, so
storage is billed for the time it is held (``ig3.rag.registry``, ``ig3.billing.storage``).
"""

from ig3.observability import logger, metrics, tracer
from ig3.rag import wiring


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    closed = wiring.collections_service().close_storage_intervals()
    metrics.add_metric(name="RagStorageIntervalsClosed", unit="Count", value=closed)
    return {"closed": closed}
