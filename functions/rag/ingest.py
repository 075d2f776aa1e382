"""rag_ingest function: one large upload per message (SQS ``rag_ingest``, batch size 1).

``CollectionsService.run_job`` applies the job's remaining batches from its checkpoint, so a
redelivered message (a crash, a timeout) resumes instead of duplicating chunks. A failure that
retrying cannot fix marks the job failed and deletes the message; anything else is reported in
``batchItemFailures`` and retried, and on the queue's last receive the job is marked failed
before the message goes to the DLQ.
"""

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from ig3.observability import logger, metrics, tracer
from ig3.rag.jobs import parse_job_message
from ig3.rag import wiring
from ig3.sqs_batch import handle_sqs_batch
from ig3.topology import TOPOLOGY

MAX_RECEIVES = TOPOLOGY.queue("rag_ingest").max_receive_count


def _record(record: SQSRecord) -> dict:
    job_id = parse_job_message(record.body)
    receives = int(record.attributes.approximate_receive_count or 1)
    job = wiring.collections_service().run_job(job_id, final_attempt=receives >= MAX_RECEIVES)
    status = job.status if job is not None else "expired"
    metrics.add_metric(name=f"RagJob_{status}", unit="Count", value=1)
    return {"job_id": job_id, "status": status}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    return handle_sqs_batch(event, context, _record)
