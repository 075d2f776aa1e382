"""Device uptime for rewards, from the fleet's DeviceOnline / DeviceOffline events.

Heartbeats are the telemetry function's: it publishes ``DeviceOnline`` when a device's
heartbeats (re)appear and ``DeviceOffline`` when they stop (detail ``{device_id, ts}``).
Those transitions — not every heartbeat — are routed (EventBridge rule -> ``presence``
queue) to the presence function, which records each one as an item keyed by
(device, time, kind): a redelivered event writes the same item again, so it is idempotent,
and events that arrive out of order are simply sorted by their time when read.

Uptime in [start, end) is then the sum of online intervals: the state at ``start`` is the
last transition before it; each online -> offline pair adds its span; a device still online
at the end counts up to ``min(end, now)``. Repeated transitions of the same kind (a lost
offline event) do not double count.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal, Protocol

import orjson

Kind = Literal["online", "offline"]
DETAIL_KINDS = {"DeviceOnline": "online", "DeviceOffline": "offline"}


class PresenceStore(Protocol):
    def record(self, device_id: str, ts_ms: int, kind: Kind) -> None: ...

    def transitions(self, device_id: str, since_ms: int, until_ms: int) -> Iterator[tuple[int, Kind]]: ...

    def last_before(self, device_id: str, ts_ms: int) -> tuple[int, Kind] | None: ...


def _sk(ts_ms: int, kind: str) -> str:
    return f"{ts_ms:015d}#{kind}"


class MemoryPresenceStore:
    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[int, str]]] = {}

    def record(self, device_id: str, ts_ms: int, kind: Kind) -> None:
        rows = self.rows.setdefault(device_id, [])
        if (ts_ms, kind) not in rows:
            bisect.insort(rows, (ts_ms, kind))

    def transitions(self, device_id: str, since_ms: int, until_ms: int) -> Iterator[tuple[int, Kind]]:
        for ts, kind in self.rows.get(device_id, []):
            if since_ms <= ts < until_ms:
                yield ts, kind  # type: ignore[misc]

    def last_before(self, device_id: str, ts_ms: int) -> tuple[int, Kind] | None:
        before = [r for r in self.rows.get(device_id, []) if r[0] < ts_ms]
        return before[-1] if before else None  # type: ignore[return-value]


class DynamoPresenceStore:
    """Table ``presence``: pk ``device_id``, sk ``ts_key`` = ``<ms, 15 digits>#<kind>``."""

    def __init__(self, table: str, client: Any | None = None):
        self.table = table
        self._client = client

    @classmethod
    def from_env(cls) -> DynamoPresenceStore:
        from ig3.config import table_name

        return cls(table_name("presence"))

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("dynamodb")
        return self._client

    def record(self, device_id: str, ts_ms: int, kind: Kind) -> None:
        self.client.put_item(
            TableName=self.table,
            Item={
                "device_id": {"S": device_id},
                "ts_key": {"S": _sk(ts_ms, kind)},
                "kind": {"S": kind},
                "ts_ms": {"N": str(ts_ms)},
            },
        )

    def transitions(self, device_id: str, since_ms: int, until_ms: int) -> Iterator[tuple[int, Kind]]:
        args: dict[str, Any] = {
            "TableName": self.table,
            "ConsistentRead": True,
            "KeyConditionExpression": "device_id = :d AND ts_key BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {
                ":d": {"S": device_id},
                ":lo": {"S": f"{since_ms:015d}"},
                ":hi": {"S": f"{until_ms:015d}"},
            },
        }
        while True:
            resp = self.client.query(**args)
            for item in resp.get("Items", []):
                yield int(item["ts_ms"]["N"]), item["kind"]["S"]
            if "LastEvaluatedKey" not in resp:
                return
            args["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def last_before(self, device_id: str, ts_ms: int) -> tuple[int, Kind] | None:
        resp = self.client.query(
            TableName=self.table,
            ConsistentRead=True,
            ScanIndexForward=False,
            Limit=1,
            KeyConditionExpression="device_id = :d AND ts_key < :t",
            ExpressionAttributeValues={":d": {"S": device_id}, ":t": {"S": f"{ts_ms:015d}"}},
        )
        items = resp.get("Items", [])
        return (int(items[0]["ts_ms"]["N"]), items[0]["kind"]["S"]) if items else None


class PresenceUptime:
    """UptimeSource over recorded transitions."""

    def __init__(self, store: PresenceStore, clock=time.time):
        self.store = store
        self._clock = clock

    def online_seconds(self, device_ids: list[str], start: datetime, end: datetime) -> dict[str, float]:
        start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        horizon = min(end_ms, int(self._clock() * 1000))
        out = {}
        for device in device_ids:
            prior = self.store.last_before(device, start_ms)
            online_since = start_ms if prior and prior[1] == "online" else None
            total = 0
            for ts, kind in sorted(self.store.transitions(device, start_ms, end_ms)):
                if kind == "online" and online_since is None:
                    online_since = ts
                elif kind == "offline" and online_since is not None:
                    total += ts - online_since
                    online_since = None
            if online_since is not None and horizon > online_since:
                total += horizon - online_since
            out[device] = total / 1000
        return out


def parse_presence_message(body: str | bytes) -> tuple[str, int, Kind]:
    """An SQS body holding the EventBridge envelope of DeviceOnline / DeviceOffline."""
    doc = orjson.loads(body)
    kind = DETAIL_KINDS.get(doc.get("detail-type", ""))
    detail = doc.get("detail") or {}
    device = detail.get("device_id")
    if kind is None or not isinstance(device, str) or not device:
        raise ValueError("not a DeviceOnline/DeviceOffline event with a device_id")
    ts = detail.get("ts")
    if isinstance(ts, (int, float)) and not isinstance(ts, bool):
        ts_ms = int(ts * 1000)
    else:  # the envelope's own time (second precision) when the publisher sent none
        ts_ms = int(datetime.fromisoformat(str(doc["time"]).replace("Z", "+00:00")).timestamp() * 1000)
    return device, ts_ms, kind  # type: ignore[return-value]
