"""cloud function: runs the cloud-routed assignments the dispatcher hands off (SQS ``cloud`` queue,
one per invocation) on the SageMaker fallback through LiteLLM. A container image: LiteLLM does not
fit a zip. Its timeout outlasts SageMaker's 60 s invocation limit."""
import os

from pydantic import BaseModel

from ig3.lambda_events import HANDLER_ENV
from ig3.observability import logger, metrics, tracer
from ig3.sqs_batch import handle_sqs_batch
from ig3.tasks.wiring import task_service

if os.environ.get(HANDLER_ENV) == f"{__name__}:handler":
    # In its own container (AWS): import LiteLLM in the init phase, not inside the first attempt's
    # deadline. Where containers are shared by every function (ig3 up), it stays lazy.
    from ig3.tasks.cloud import _litellm

    _litellm()


class CloudMessage(BaseModel):
    task_id: str
    attempt: int


def _record(record):
    msg = CloudMessage.model_validate_json(record.body)
    logger.set_correlation_id(msg.task_id)
    outcome = task_service().run_cloud(msg.task_id, msg.attempt)
    logger.info("cloud attempt", extra={"task_id": msg.task_id, "attempt": msg.attempt, "outcome": outcome})


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    return handle_sqs_batch(event, context, _record)
