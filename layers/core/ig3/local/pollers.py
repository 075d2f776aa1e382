"""SQS event-source mappings: poll a queue, invoke the function with a real Lambda SQS event.

Honours ``batchItemFailures`` like Lambda's mapping does: the successful records are deleted,
the failed ones stay and reappear after their visibility timeout (then go to the DLQ after the
queue's ``maxReceiveCount``, which moto enforces from the redrive policy). An invocation that
raises fails the whole batch.

Batches are gathered like Lambda's mapping gathers them: up to the trigger's ``batch_size``
(SQS returns at most 10 per receive, so several receives make one batch) within its
``max_batching_window_s``. Without that, a batch-100 consumer such as telemetry ran ten times
as many invocations as in AWS, and with 50 devices its queue backed up; moto's SQS does work
linear in a queue's depth on every send, so the backlog slowed every other queue with it.
Unlike Lambda, a batch is delivered as soon as the queue runs dry instead of waiting out the
window (lower latency locally; the batch contents are the same kind either way).
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
                 region: str = "us-east-1", wait_s: int = 1, max_batching_window_s: float = 0.0):
        if not 1 <= batch_size <= 10_000:
            raise ValueError(f"batch_size must be 1..10000 (Lambda's SQS limit), got {batch_size}")
        if batch_size > 10 and max_batching_window_s <= 0:
            # Lambda refuses this too: batches over 10 need a batching window.
            raise ValueError("a batch_size over 10 needs max_batching_window_s > 0")
        self._sqs, self._runtime, self._fn = sqs, runtime, function
        self._url, self._batch, self._region, self._wait = queue_url, batch_size, region, wait_s
        self._window = max_batching_window_s
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
                messages = self._receive(self._batch, self._wait)
            except Exception:  # noqa: BLE001 — moto restarting / shutting down
                if self._stop.wait(0.5):
                    return
                continue
            if not messages:
                continue
            self._deliver(self._fill(messages))

    def _receive(self, n: int, wait_s: int) -> list[dict[str, Any]]:
        resp = self._sqs.receive_message(QueueUrl=self._url, MaxNumberOfMessages=min(10, n),
                                         WaitTimeSeconds=wait_s, AttributeNames=["All"],
                                         MessageAttributeNames=["All"])
        return resp.get("Messages", [])

    def _fill(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Top the first receive up to the batch size while the window lasts and messages are there."""
        deadline = time.monotonic() + self._window
        seen = {m["MessageId"] for m in messages}
        while len(messages) < self._batch and time.monotonic() < deadline and not self._stop.is_set():
            try:
                more = self._receive(self._batch - len(messages), 0)
            except Exception:  # noqa: BLE001 — deliver what we have; the rest waits for the next poll
                break
            fresh = [m for m in more if m["MessageId"] not in seen]  # a redelivery inside one batch
            if not fresh:
                break
            seen.update(m["MessageId"] for m in fresh)
            messages += fresh
        return messages

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
