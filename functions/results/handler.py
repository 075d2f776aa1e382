"""results function: device results (IoT rule -> SQS ``results`` queue) complete, re-queue or fail tasks."""
import orjson

from ig3.observability import logger, metrics, tracer
from ig3.sqs_batch import handle_sqs_batch
from ig3.tasks.wiring import task_service
from ig3.wire import DeviceResult


def _record(record):
    body = orjson.loads(record.body)
    try:
        result = DeviceResult.model_validate(body)
    except ValueError:
        # Garbage from a device can never succeed on retry: drop it (counted), don't poison the queue.
        metrics.add_metric(name="ResultsMalformed", unit="Count", value=1)
        logger.warning("malformed result dropped", extra={"thing": body.get("thing") if isinstance(body, dict) else None})
        return
    logger.set_correlation_id(result.task_id)
    outcome = task_service().handle_result(result)
    logger.info("result", extra={"task_id": result.task_id, "device": result.thing, "outcome": outcome})


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    return handle_sqs_batch(event, context, _record)
