"""The local cloud's SQS event-source mapping against moto server: batches gathered like Lambda's.

The function side is a recording runtime (the port the poller invokes); the queue is a real moto
SQS queue, so receives, the 10-per-receive limit, deletes and redeliveries are moto's.
"""
from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import boto3
import pytest

from ig3.local.pollers import SqsPoller

pytestmark = pytest.mark.integration


class RecordingRuntime:
    def __init__(self, fail_bodies: set[str] | None = None):
        self.batches: list[list[str]] = []
        self.fail_bodies = fail_bodies or set()

    def invoke(self, name, handler, event, timeout_s=None, memory_mb=None):
        self.batches.append([r["body"] for r in event["Records"]])
        return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"]
                                      if r["body"] in self.fail_bodies]}


@pytest.fixture
def sqs(moto_endpoint):
    return boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _queue(sqs) -> str:
    return sqs.create_queue(QueueName=f"poller-{uuid.uuid4().hex[:8]}",
                            Attributes={"VisibilityTimeout": "30"})["QueueUrl"]


def _send(sqs, url: str, bodies: list[str]) -> None:
    for i in range(0, len(bodies), 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": b}
                                                      for n, b in enumerate(bodies[i : i + 10])])


def _wait_for(pred, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _depth(sqs, url: str) -> int:
    a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


def test_a_batch_of_100_is_gathered_from_several_receives_and_deleted(sqs):
    url = _queue(sqs)
    bodies = [f"m{i}" for i in range(250)]
    _send(sqs, url, bodies)  # queued before the poller starts: the batches can fill
    runtime = RecordingRuntime()
    poller = SqsPoller(sqs=sqs, runtime=runtime, function=SimpleNamespace(name="telemetry", handler="x:y",
                       timeout_s=30, memory_mb=128), queue_url=url, batch_size=100, max_batching_window_s=2)
    poller.start()
    try:
        _wait_for(lambda: sum(map(len, runtime.batches)) >= 250)
        _wait_for(lambda: _depth(sqs, url) == 0)
    finally:
        poller.stop()
        poller.join()
    sizes = [len(b) for b in runtime.batches]
    assert max(sizes) == 100 and all(s <= 100 for s in sizes), sizes
    assert len(sizes) <= 4, sizes  # 250 messages: 100 + 100 + 50 (a receive may return fewer than 10)
    delivered = [b for batch in runtime.batches for b in batch]
    assert sorted(delivered) == sorted(bodies)  # each once: none lost, none doubled


def test_small_batches_stay_small_and_failed_items_come_back(sqs):
    url = _queue(sqs)
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "1"})
    runtime = RecordingRuntime(fail_bodies={"bad"})
    poller = SqsPoller(sqs=sqs, runtime=runtime, function=SimpleNamespace(name="dispatch", handler="x:y",
                       timeout_s=30, memory_mb=128), queue_url=url, batch_size=10)
    _send(sqs, url, [f"ok{i}" for i in range(14)] + ["bad"])
    poller.start()
    try:
        # "bad" is reported as a batch item failure: it stays and is delivered again after its timeout.
        _wait_for(lambda: sum(b.count("bad") for b in runtime.batches) >= 2)
    finally:
        poller.stop()
        poller.join()
    assert all(len(b) <= 10 for b in runtime.batches)
    oks = [b for batch in runtime.batches for b in batch if b != "bad"]
    assert sorted(oks) == sorted(f"ok{i}" for i in range(14))


@pytest.mark.parametrize("size,window", [(0, 0), (10_001, 5), (11, 0)])
def test_batch_settings_lambda_would_refuse_are_refused(sqs, size, window):
    url = _queue(sqs)
    with pytest.raises(ValueError):
        SqsPoller(sqs=sqs, runtime=RecordingRuntime(), function=SimpleNamespace(name="f", handler="x:y"),
                  queue_url=url, batch_size=size, max_batching_window_s=window)
