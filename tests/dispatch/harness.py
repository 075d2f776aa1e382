"""The dispatch path as it runs in AWS, minus AWS: the real functions (dispatch, results, timeouts,
telemetry handlers) invoked with real Lambda SQS events pulled from moto's queues, the real task
service (DynamoDB store in moto, the scheduler on real Redis, EventBridge in moto), and simulated
devices that receive what the dispatcher publishes and answer through the results queue exactly
as the IoT rule would deliver their MQTT results (``SELECT *, topic(4) AS thing``).

Simulated devices have real secp256k1 keys and sign with the edge agent's own ``ResultSigner``.
Behaviours: ``ok`` (signed result), ``fail`` (retryable error), ``hang`` (never answers),
``garbage`` (a result that is not a ``DeviceResult``), ``forge`` (signed by another key than the
one it names), ``release`` (gives the task back).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ig3.local.iot import rule_payload
from ig3.local.lambda_runtime import LambdaContext
from ig3.local.pollers import sqs_event
from ig3.topology import TOPOLOGY, queue_env
from ig3.wire import (
    DeviceLoad,
    DeviceResult,
    DeviceTask,
    Heartbeat,
    Location,
    ModelInfo,
    ResultError,
    TaskOutput,
    Usage,
    device_results_topic,
)

REGION = "us-east-1"


@dataclass
class SimDevice:
    thing: str
    behaviour: str = "ok"
    models: tuple[str, ...] = ("tiny-llama",)
    tokens_per_s: float = 20.0
    capacity: int = 2
    region: str = "eu-central-1"
    location: tuple[float, float] = (52.5, 13.4)
    received: list[DeviceTask] = field(default_factory=list)

    def __post_init__(self) -> None:
        from eth_account import Account

        from ig3_edge.signing import ResultSigner

        self.signer = ResultSigner(Account.create().key.hex())
        self.forger = ResultSigner(Account.create().key.hex())

    def heartbeat(self, ts: float | None = None, in_flight: int = 0) -> Heartbeat:
        return Heartbeat(
            thing=self.thing,
            ts=ts or time.time(),
            region=self.region,
            location=Location(lat=self.location[0], lon=self.location[1]),
            load=DeviceLoad(in_flight=in_flight, capacity=self.capacity),
            tokens_per_s=self.tokens_per_s,
            models=[
                ModelInfo(
                    name=m,
                    ctx=512,
                    quant="F32",
                    kinds=["chat", "completion"],
                    tokens_per_s=self.tokens_per_s,
                    sha256="ab" * 32,
                )
                for m in self.models
            ],
        )

    def answer(self, task: DeviceTask) -> bytes | None:
        """The MQTT payload this device publishes on its results topic (None: it never answers)."""
        self.received.append(task)
        if self.behaviour == "hang":
            return None
        if self.behaviour == "garbage":
            return orjson.dumps({"task_id": task.id, "attempt": "one", "status": "done?", "output": 42})
        if self.behaviour == "fail":
            result = DeviceResult(
                task_id=task.id,
                attempt=task.attempt,
                thing=self.thing,
                status="error",
                error=ResultError(code="internal", message="llama.cpp crashed", retryable=True),
            )
        elif self.behaviour == "release":
            result = DeviceResult(task_id=task.id, attempt=task.attempt, thing=self.thing, status="released")
        else:
            text = f"answer from {self.thing}"
            result = DeviceResult(
                task_id=task.id,
                attempt=task.attempt,
                thing=self.thing,
                status="ok",
                output=TaskOutput(text=text, finish_reason="stop"),
                model_hash=task.model_hash,
                usage=Usage(prompt_tokens=7, completion_tokens=4, duration_ms=12.5),
            )
        signed = self.signer.sign(result)
        if self.behaviour == "forge":
            # Signed by another key, but naming this device's address as the signer.
            other = self.forger.sign(result)
            signed = other.model_copy(update={"signer": self.signer.address})
        return signed.model_dump_json(exclude_none=True).encode()


class DeviceNetwork:
    """The IotPublisher the dispatcher publishes through: device topics reach the simulated
    devices, whose results go to the results queue as the IoT rule would send them."""

    def __init__(self, harness: Harness):
        self.h = harness
        self.devices: dict[str, SimDevice] = {}
        self.published: list[tuple[str, bytes]] = []
        self._rule = next(r for r in TOPOLOGY.iot_rules if r.target_queue == "results")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.published.append((topic, payload))
        parts = topic.split("/")
        if len(parts) == 5 and parts[:3] == ["ig3", "v1", "devices"] and parts[4] == "tasks":
            device = self.devices.get(parts[3])
            if device is None:
                return  # nobody listening: the timeout re-queues it
            answer = device.answer(DeviceTask.model_validate_json(payload))
            if answer is not None:
                body = rule_payload(self._rule, device_results_topic(device.thing), answer)
                if body is None:  # not a JSON object: the rule drops it
                    return
                self.h.send("results", body)

    def stream(self, task_id: str) -> list[dict[str, Any]]:
        topic = f"ig3/v1/tasks/{task_id}/stream"
        return [orjson.loads(p) for t, p in self.published if t == topic]


class Harness:
    def __init__(self, env: dict[str, str]):
        import boto3

        from ig3.tasks import wiring

        self.env = env
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.events_client = boto3.client("events", region_name=REGION)
        self.svc = wiring.task_service()
        self.live = wiring.live_state()
        self.net = DeviceNetwork(self)
        self.svc.iot = self.net
        if self.svc.cloud is not None:
            self.svc.cloud.stream_publisher = self.net
        self.account = "0x" + uuid.uuid4().hex[:8] + "0" * 32
        if getattr(self.svc, "budget", None) is not None:
            # Submissions hold funds first (hold and settle): the test wallet gets a real deposit.
            from ig3.billing.wiring import billing_service

            billing_service().credit(self.account, 10**12, reference=f"dispatch-test-{self.account}")
        self._arns: dict[str, str] = {}
        self.batch_failures: dict[str, int] = {}
        self.delivered: dict[str, int] = {}  # messages handed to each queue's function
        self.failed_receipts: dict[str, list[str]] = {}  # of messages their function reported failed

    # ----------------------------------------------------------------- devices
    def add(self, device: SimDevice, *, beat: bool = True) -> SimDevice:
        self.net.devices[device.thing] = device
        if beat:
            self.heartbeat(device)
        return device

    def heartbeat(self, *devices: SimDevice) -> None:
        """Heartbeats through the telemetry queue and function (as the IoT rule batches them)."""
        for d in devices:
            self.send("telemetry", d.heartbeat().model_dump_json(exclude_none=True))
        self.pump_until_empty("telemetry")

    # ------------------------------------------------------------------ queues
    def url(self, queue: str) -> str:
        return self.env[queue_env(queue)]

    def send(self, queue: str, body: str, delay_s: int = 0) -> None:
        self.sqs.send_message(QueueUrl=self.url(queue), MessageBody=body, DelaySeconds=delay_s)

    def handler(self, queue: str) -> Callable[..., Any]:
        fn = next(f for f in TOPOLOGY.functions if any(t.queue == queue for t in f.triggers))
        module, _, attr = fn.handler.partition(":")
        import importlib

        return getattr(importlib.import_module(module), attr), fn.name

    def pump(self, queue: str, wait_s: int = 0) -> int:
        """One receive + one invocation of the queue's function, with Lambda's batch semantics."""
        url = self.url(queue)
        resp = self.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait_s,
            AttributeNames=["All"],
            VisibilityTimeout=30,
        )
        messages = resp.get("Messages", [])
        if not messages:
            return 0
        arn = self._arns.get(queue)
        if arn is None:
            arn = self._arns[queue] = self.sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["QueueArn"]
            )["Attributes"]["QueueArn"]
        handler, name = self.handler(queue)
        ctx = LambdaContext(
            function_name=name,
            aws_request_id=str(uuid.uuid4()),
            invoked_function_arn=f"arn:aws:lambda:{REGION}:000000000000:function:{name}",
            _deadline=time.time() + 30,
        )
        response = handler(sqs_event(messages, arn, REGION), ctx) or {}
        failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        self.batch_failures[queue] = self.batch_failures.get(queue, 0) + len(failed)
        self.delivered[queue] = self.delivered.get(queue, 0) + len(messages)
        self.failed_receipts.setdefault(queue, []).extend(
            m["ReceiptHandle"] for m in messages if m["MessageId"] in failed
        )
        done = [m for m in messages if m["MessageId"] not in failed]
        if done:
            self.sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
            )
        return len(messages)

    def expire_failed(self, queue: str) -> int:
        """The visibility timeout of the messages reported failed passes now (SQS redelivers them)."""
        receipts, self.failed_receipts[queue] = self.failed_receipts.get(queue, []), []
        for r in receipts:
            self.sqs.change_message_visibility(QueueUrl=self.url(queue), ReceiptHandle=r, VisibilityTimeout=0)
        return len(receipts)

    def pump_until_empty(self, queue: str) -> int:
        total = 0
        while n := self.pump(queue):
            total += n
        return total

    def run(self, until: Callable[[], bool], timeout_s: float = 20.0) -> None:
        """Drive the dispatch/cloud/results/timeouts functions until ``until()`` holds."""
        deadline = time.time() + timeout_s
        while not until():
            if time.time() > deadline:
                raise AssertionError("the condition did not hold in time")
            moved = sum(self.pump(q) for q in ("tasks", "cloud", "results", "timeouts"))
            if not moved:
                time.sleep(0.2)  # delayed messages (backoff, timeouts) are not visible yet

    # ------------------------------------------------------------------- tasks
    def submit(self, **spec: Any):
        from ig3.tasks.model import TaskSpec

        body = {
            "kind": "chat",
            "model": "tiny-llama",
            "input": {"messages": [{"role": "user", "content": "hi"}]},
            "limits": {"max_tokens": 8, "temperature": 0},
            "stream": False,
            **spec,
        }
        return self.svc.submit(TaskSpec.model_validate(body), account=self.account)

    def task(self, task_id: str):
        return self.svc.store.get(task_id)

    def terminal(self, task_id: str) -> Callable[[], bool]:
        return lambda: (t := self.task(task_id)) is not None and t.terminal

    # ------------------------------------------------------------------ events
    def capture_events(self, pattern_detail: dict[str, Any], detail_types: list[str] | None = None) -> str:
        """An EventBridge rule on the bus with an SQS target (in moto); returns the queue URL."""
        name = f"cap-{uuid.uuid4().hex[:10]}"
        url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        pattern: dict[str, Any] = {"source": ["ig3"], "detail": pattern_detail}
        if detail_types:
            pattern["detail-type"] = detail_types
        bus = self.env.get("IG3_EVENT_BUS", "ig3")
        self.events_client.put_rule(
            Name=name, EventBusName=bus, EventPattern=json.dumps(pattern), State="ENABLED"
        )
        self.events_client.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
        return url

    def drain_events(self, url: str) -> list[dict[str, Any]]:
        out = []
        while True:
            resp = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            messages = resp.get("Messages", [])
            if not messages:
                return out
            out += [json.loads(m["Body"]) for m in messages]
            self.sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
