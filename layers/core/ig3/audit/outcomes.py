"""Audit outcomes kept for rewards: which of a device's work was audited clean, which was dirty.

The reputation store (Redis) keeps a device's *standing*; it forgets individual audits (the last
100) and is not where money is decided. Rewards need a durable per-task record, so every
``AuditCompleted`` and ``IntegrityFault`` event (published by ``ig3.audit.service``) is routed
(EventBridge rule -> ``audit_outcomes`` queue) to a consumer that writes one item per audit / fault
into the ``audit_outcomes`` table. Items are keyed by what they are about (the audited task, or the
fault's idempotency key), written with ``attribute_not_exists``: a redelivered event — or a
redelivered audit job that produced a second event — writes nothing new, and the first verdict
stands, exactly as the reputation store folds each audit once.

``IntegrityRecord`` is what the epoch rewards read per device (``ig3.billing.rewards``):
- ``clean``: tasks whose audit passed on its own evidence (a greedy re-score, a regeneration);
- ``provisional``: tasks whose sampled-output audit passed only as part of the device's pooled
  evidence — a later pooled conviction retracts them (``ig3.audit.reputation.apply``), so they count
  as clean only for a device with no integrity failure in the window;
- ``dirty``: tasks whose audit failed;
- ``failures``: integrity failures in the window (failed audits, signature failures, results naming
  another model file).

Pure module: the DynamoDB adapter imports boto3 lazily through ``ig3.aws``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import orjson

RETENTION_S = 120 * 86400  # epochs are weekly; rewards read the last one (operators may re-run older ones)
DETAIL_TYPES = ("AuditCompleted", "IntegrityFault")
Kind = Literal["audit", "fault"]


@dataclass(frozen=True)
class OutcomeRow:
    device: str
    entry: str  # sort key: "audit#<task_id>" | "fault#<key>"
    kind: Kind
    at_ms: int
    verdict: str  # pass | fail | inconclusive | undecided (audits); the signal name (faults)
    task_id: str | None = None
    provisional: bool = False


@dataclass
class IntegrityRecord:
    clean: set[str] = field(default_factory=set)
    provisional: set[str] = field(default_factory=set)
    dirty: set[str] = field(default_factory=set)
    failures: int = 0

    @classmethod
    def of(cls, rows: list[OutcomeRow]) -> IntegrityRecord:
        r = cls()
        for row in rows:
            if row.kind == "fault":
                r.failures += 1
            elif row.verdict == "fail":
                r.failures += 1
                if row.task_id:
                    r.dirty.add(row.task_id)
            elif row.verdict == "pass" and row.task_id:
                (r.provisional if row.provisional else r.clean).add(row.task_id)
        return r


def parse_outcome_message(body: str | bytes) -> OutcomeRow:
    """An SQS body holding the EventBridge envelope of ``AuditCompleted`` / ``IntegrityFault``."""
    doc = orjson.loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("detail") or {}, dict):
        raise ValueError("not an EventBridge envelope")
    kind = doc.get("detail-type")
    detail = doc.get("detail") or {}
    device = detail.get("device")
    if kind not in DETAIL_TYPES or not isinstance(device, str) or not device:
        raise ValueError("not an AuditCompleted/IntegrityFault event with a device")
    at = detail.get("at")
    if isinstance(at, (int, float)) and not isinstance(at, bool):
        at_ms = int(at * 1000)
    else:  # the envelope's own time (second precision) when the publisher sent none
        try:
            at_ms = int(datetime.fromisoformat(str(doc["time"]).replace("Z", "+00:00")).timestamp() * 1000)
        except (KeyError, ValueError):
            raise ValueError("event without a time") from None
    if kind == "AuditCompleted":
        task_id, verdict = detail.get("task_id"), detail.get("verdict")
        if not isinstance(task_id, str) or not task_id or not isinstance(verdict, str):
            raise ValueError("AuditCompleted without task_id/verdict")
        return OutcomeRow(device, f"audit#{task_id}", "audit", at_ms, verdict, task_id,
                          provisional=bool(detail.get("pooled")))
    key, signal = detail.get("key"), detail.get("signal")
    if not isinstance(key, str) or not key or not isinstance(signal, str):
        raise ValueError("IntegrityFault without key/signal")
    task_id = detail.get("task_id") if isinstance(detail.get("task_id"), str) else None
    return OutcomeRow(device, f"fault#{key}", "fault", at_ms, signal, task_id)


class OutcomeStore(Protocol):
    def record(self, row: OutcomeRow) -> bool: ...  # False: already recorded (first write wins)

    def rows(self, device: str, since_ms: int, until_ms: int) -> list[OutcomeRow]: ...


class MemoryOutcomeStore:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], OutcomeRow] = {}

    def record(self, row: OutcomeRow) -> bool:
        if (row.device, row.entry) in self.items:
            return False
        self.items[(row.device, row.entry)] = row
        return True

    def rows(self, device: str, since_ms: int, until_ms: int) -> list[OutcomeRow]:
        return [r for (d, _), r in self.items.items() if d == device and since_ms <= r.at_ms < until_ms]


class DynamoOutcomeStore:
    """Table ``audit_outcomes``: pk ``device_id``, sk ``entry``; ``at_ms`` filtered on read."""

    def __init__(self, table: str, client: Any | None = None, clock=time.time):
        self.table = table
        self._client = client
        self._clock = clock

    @classmethod
    def from_env(cls) -> DynamoOutcomeStore:
        from ig3.config import table_name

        return cls(table_name("audit_outcomes"))

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("dynamodb")
        return self._client

    def record(self, row: OutcomeRow) -> bool:
        item = {
            "device_id": {"S": row.device},
            "entry": {"S": row.entry},
            "kind": {"S": row.kind},
            "at_ms": {"N": str(row.at_ms)},
            "verdict": {"S": row.verdict},
            "provisional": {"BOOL": row.provisional},
            "expires_at": {"N": str(int(self._clock()) + RETENTION_S)},
        }
        if row.task_id:
            item["task_id"] = {"S": row.task_id}
        try:
            self.client.put_item(TableName=self.table, Item=item,
                                 ConditionExpression="attribute_not_exists(device_id)")
            return True
        except self.client.exceptions.ConditionalCheckFailedException:
            return False

    def rows(self, device: str, since_ms: int, until_ms: int) -> list[OutcomeRow]:
        args: dict[str, Any] = {
            "TableName": self.table,
            "ConsistentRead": True,
            "KeyConditionExpression": "device_id = :d",
            "FilterExpression": "at_ms BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {
                ":d": {"S": device}, ":lo": {"N": str(since_ms)}, ":hi": {"N": str(until_ms - 1)},
            },
        }
        out: list[OutcomeRow] = []
        while True:
            resp = self.client.query(**args)
            for i in resp.get("Items", []):
                out.append(OutcomeRow(
                    device=i["device_id"]["S"],
                    entry=i["entry"]["S"],
                    kind=i["kind"]["S"],  # type: ignore[arg-type]
                    at_ms=int(i["at_ms"]["N"]),
                    verdict=i["verdict"]["S"],
                    task_id=i.get("task_id", {}).get("S"),
                    provisional=i.get("provisional", {}).get("BOOL", False),
                ))
            if "LastEvaluatedKey" not in resp:
                return out
            args["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
