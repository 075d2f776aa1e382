"""dispatch function: places PENDING tasks (SQS ``tasks`` queue) on a device or hands them to the
cloud worker.

The batch's EventBridge events go out together at its end, before any message is acknowledged."""
from pydantic import BaseModel

from ig3.observability import logger, metrics, tracer
from ig3.sqs_batch import handle_sqs_batch
from ig3.tasks.wiring import task_service


class DispatchMessage(BaseModel):
    task_id: str


def _record(record):
    msg = DispatchMessage.model_validate_json(record.body)
    logger.set_correlation_id(msg.task_id)  # correlation id = task id across functions
    # Lambda always sends the receive count; a hand-built event may not (then: first delivery).
    redelivered = int(record.raw_event.get("attributes", {}).get("ApproximateReceiveCount") or 1) > 1
    outcome = task_service().dispatch(msg.task_id, redelivered=redelivered)
    if outcome.action == "waiting":
        # Busy fleet: re-enqueue with a short delay rather than hold the batch.
        task_service().queue.send_dispatch(msg.task_id, outcome.delay_s)
    logger.info("dispatched", extra={"task_id": msg.task_id, "action": outcome.action})


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    return handle_sqs_batch(event, context, _record, events=task_service().events)
