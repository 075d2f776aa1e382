"""audit function: audit jobs (SQS ``audit`` queue) re-scored by the cloud's reference llama.cpp copy.

In AWS this is a container image (``infra/cdk/docker/audit.Dockerfile``: llama-cpp-python built from
source, ``ig3_edge.scoring``) and the reference GGUF files come from the models bucket
(``IG3_AUDIT_MODELS_BUCKET``), published by an operator with ``ig3 models publish`` under their sha256.
The first job pinning a hash fetches that file into ``/tmp`` (streamed, sha256-verified, atomically
renamed; LRU within ``IG3_AUDIT_MODELS_CACHE_MB``) and loads it; the model stays loaded for the next
invocations of the warm environment (``ig3.audit.rescorer``). ``ig3 up`` and tests use a local
directory instead (``IG3_AUDIT_MODELS_DIR``).

One job per message (batch size 1 suits a CPU-bound forward pass). A job no auditor here can take (its
model is not in the store) raises ``Unavailable``; a downloaded copy whose sha256 or length does not
match raises ``ModelIntegrityError`` (metric ``AuditModelRejected``, logged, never cached or used): either
way the message is retried and lands in the DLQ for an operator after the queue's receive count.
Verdicts fold into reputations exactly once per job (``ig3.audit.store``), so redelivery is harmless.

A deployment with no reference copy at all (neither variable set) skips jobs (metric
``AuditJobsSkipped``) instead of filling the DLQ, whose every message is an alarm: there is no auditor a
retry could reach.
"""

import orjson

from ig3.audit.models import ModelIntegrityError
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
    try:
        outcome = service.run(job)
    except ModelIntegrityError as exc:
        # The fetched bytes are not the pinned file (the store already counted and logged it): retried.
        logger.error("audit model rejected", extra={"task_id": job.task_id, "model_hash": job.model_hash,
                                                    "error": str(exc)})
        raise
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
