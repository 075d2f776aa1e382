"""timeouts function: a delayed message per assignment; an expired assignment is re-queued elsewhere."""
from pydantic import BaseModel

from ig3.observability import logger, metrics, tracer
from ig3.sqs_batch import handle_sqs_batch
from ig3.tasks.wiring import task_service


class TimeoutMessage(BaseModel):
    task_id: str
    attempt: int
    deadline: float


def _record(record):
    msg = TimeoutMessage.model_validate_json(record.body)
    logger.set_correlation_id(msg.task_id)
    outcome = task_service().handle_timeout(msg.task_id, msg.attempt, msg.deadline)
    logger.info("timeout", extra={"task_id": msg.task_id, "attempt": msg.attempt, "outcome": outcome})


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    return handle_sqs_batch(event, context, _record)
