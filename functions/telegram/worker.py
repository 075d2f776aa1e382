"""telegram_worker function: jobs on the ``telegram`` queue -> a streamed answer edited into the
placeholder message. One job per invocation (batch size 1): each answer streams for seconds and
must not wait behind another chat's. A failed job is reported in ``batchItemFailures``; the
"answered" mark makes a redelivered job a no-op once it has been answered.
"""
import json

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from ig3.observability import logger, metrics, tracer
from ig3.sqs_batch import handle_sqs_batch


def _record(record: SQSRecord) -> dict:
    from ig3.telegram import runtime
    from ig3.telegram.bot import AnswerWorker

    job = json.loads(record.body)
    outcome = runtime.run_with_clients(
        lambda bot, gw: AnswerWorker(runtime.settings(), runtime.store(), bot, gw).answer(job))
    logger.info("telegram answer", extra={"outcome": outcome, "model": job.get("model")})
    metrics.add_metric(name="TelegramAnswer", unit="Count", value=1)
    return {"outcome": outcome}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    return handle_sqs_batch(event, context, _record)
