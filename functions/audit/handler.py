"""audit function: audit jobs (SQS ``audit`` queue) re-scored by the cloud's reference llama.cpp copy.

One job per message (batch size 1 suits a CPU-bound forward pass). A job no auditor here can
take (the model file is not among ``IG3_AUDIT_MODELS_DIR``) raises ``Unavailable``: the message
is retried and lands in the DLQ for an operator after the queue's receive count. Verdicts fold
into reputations exactly once per job (``ig3.audit.store``), so redelivery is harmless.

A deployment with no reference copy at all (``IG3_AUDIT_MODELS_DIR`` unset: the zip has no
llama.cpp, see ``ig3/audit/README.md``) skips jobs (metric ``AuditJobsSkipped``) instead of
filling the DLQ, whose every message is an alarm: there is no auditor a retry could reach.
"""

import orjson

from ig3.audit.service import AuditJob
from ig3.audit.wiring import audit_service
from ig3.observability import logger, metrics, tracer
from ig3.sqs_batch import handle_sqs_batch


def _record(record):
    try:
        job = AuditJob.model_validate(orjson.loads(record.body))
    except ValueError:
        metrics.add_metric(name="AuditJobsMalformed", unit="Count", value=1)
        logger.warning("malformed audit job dropped")
        return
    logger.set_correlation_id(job.task_id)
    service = audit_service()
    if service.auditor is None:
        metrics.add_metric(name="AuditJobsSkipped", unit="Count", value=1)
        return
    outcome = service.run(job)
    metrics.add_metric(name=f"Audit{outcome.verdict.value.capitalize()}", unit="Count", value=1)
    logger.info(
        "audit",
        extra={
            "task_id": job.task_id,
            "device": job.device,
            "verdict": outcome.verdict.value,
            "regenerated": outcome.regenerated,
            "transition": outcome.transition,
        },
    )


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    return handle_sqs_batch(event, context, _record)
