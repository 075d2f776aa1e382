"""SQS queues of the topology, each with its DLQ: SSE, TLS enforced, redrive after N receives."""
from __future__ import annotations

from aws_cdk import Duration, Validations, Acknowledgment
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from ig3.topology import Queue

DLQ_RETENTION = Duration.days(14)  # the SQS maximum: time to inspect and redrive


class Queues(Construct):
    def __init__(self, scope: Construct, id: str, *, queues: tuple[Queue, ...]):
        super().__init__(scope, id)
        self.queues: dict[str, sqs.Queue] = {}
        self.dlqs: dict[str, sqs.Queue] = {}
        for q in queues:
            dead_letter = None
            if q.dlq:
                dlq = sqs.Queue(self, f"{q.name}-dlq", encryption=sqs.QueueEncryption.SQS_MANAGED,
                                enforce_ssl=True, retention_period=DLQ_RETENTION)
                self.dlqs[q.name] = dlq
                dead_letter = sqs.DeadLetterQueue(queue=dlq, max_receive_count=q.max_receive_count)
            queue = sqs.Queue(self, q.name, encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True,
                              visibility_timeout=Duration.seconds(q.visibility_timeout_s),
                              dead_letter_queue=dead_letter)
            if not q.dlq:
                Validations.of(queue).acknowledge(Acknowledgment(
                    id="AwsSolutions-SQS3",
                    reason=f"topology declares queue {q.name!r} with dlq=False: its consumer drops poison messages itself"))
            self.queues[q.name] = queue
