"""SQS event-source mappings: poll a queue, invoke the function with a real Lambda SQS event.

Honours ``batchItemFailures`` like Lambda's mapping does: the successful records are deleted,
the failed ones stay and reappear after their visibility timeout (then go to the DLQ after the
queue's ``maxReceiveCount``, which moto enforces from the redrive policy). An invocation that
raises fails the whole batch.
"""
from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

from ig3.local.lambda_runtime import LambdaRuntime
from ig3.observability import logger


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    records = []
    for m in messages:
        records.append({
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"],
            "attributes": m.get("Attributes", {}),
            "messageAttributes": {
                k: {"stringValue": v.get("StringValue"), "binaryValue": v.get("BinaryValue"),
                    "stringListValues": [], "binaryListValues": [], "dataType": v.get("DataType", "String")}
                for k, v in (m.get("MessageAttributes") or {}).items()
            },
            "md5OfBody": m.get("MD5OfBody") or hashlib.md5(m["Body"].encode()).hexdigest(),  # noqa: S324
            "eventSource": "aws:sqs",
            "eventSourceARN": queue_arn,
            "awsRegion": region,
        })
    return {"Records": records}


class SqsPoller:
    def __init__(self, *, sqs: Any, runtime: LambdaRuntime, function: Any, queue_url: str, batch_size: int,
                 region: str = "us-east-1", wait_s: int = 1):
        self._sqs, self._runtime, self._fn = sqs, runtime, function
        self._url, self._batch, self._region, self._wait = queue_url, min(10, batch_size), region, wait_s
        self._arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sqs-{function.name}", daemon=True)
        self.invocations = 0
        self.failures = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                resp = self._sqs.receive_message(QueueUrl=self._url, MaxNumberOfMessages=self._batch,
                                                 WaitTimeSeconds=self._wait, AttributeNames=["All"],
                                                 MessageAttributeNames=["All"])
            except Exception:  # noqa: BLE001 — moto restarting / shutting down
                if self._stop.wait(0.5):
                    return
                continue
            messages = resp.get("Messages", [])
            if not messages:
                continue
            self._deliver(messages)

    def _deliver(self, messages: list[dict[str, Any]]) -> None:
        event = sqs_event(messages, self._arn, self._region)
        self.invocations += 1
        try:
            response = self._runtime.invoke(self._fn.name, self._fn.handler, event, timeout_s=self._fn.timeout_s,
                                            memory_mb=self._fn.memory_mb)
        except Exception as exc:  # noqa: BLE001 — the whole batch failed; SQS redelivers it
            self.failures += 1
            # The container's traceback (code lines, no values) is what an operator of ig3 up needs.
            logger.error("function invocation failed", exc_info=exc, extra={"function": self._fn.name,
                                                                             "error_type": type(exc).__name__})
            return
        failed = {f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])}
        done = [m for m in messages if m["MessageId"] not in failed]
        if failed:
            self.failures += 1
        for i in range(0, len(done), 10):
            chunk = done[i : i + 10]
            self._sqs.delete_message_batch(QueueUrl=self._url, Entries=[
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(chunk)])


class Schedule:
    """An EventBridge Scheduler stand-in: invoke a function every ``every_s`` seconds."""

    def __init__(self, runtime: LambdaRuntime, function: Any, every_s: float, event: dict[str, Any]):
        self._runtime, self._fn, self._every, self._event = runtime, function, every_s, event
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"schedule-{function.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._runtime.invoke(self._fn.name, self._fn.handler, {**self._event, "time": time.time()})
            except Exception as exc:  # noqa: BLE001
                logger.error("scheduled invocation failed", extra={"function": self._fn.name,
                                                                   "error_type": type(exc).__name__})
