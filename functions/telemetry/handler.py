"""telemetry function: heartbeats (IoT rule -> SQS ``telemetry``, batched) keep live device state."""
from ig3.observability import logger, metrics, tracer
from ig3.telemetry import apply_heartbeat_batch


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    return apply_heartbeat_batch(event.get("Records", []))
