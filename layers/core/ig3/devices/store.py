"""The device registry (DynamoDB ``devices``) — port and adapters.

Item layout: the keys and what indexes or conditions need are top-level attributes
(``device_id``, ``did`` and ``owner`` for the ``by_did``/``by_owner`` GSIs, ``status``,
``thing_name``, ``region``, ``cert_id``, ``version``, ...); the full public record is also kept as
one JSON string ``doc``, which is what ``GET /v1/devices`` returns as is.

Writes are ``UpdateItem … SET`` of the attributes this module owns — never a whole-item put —
so attributes other writers keep on the same item (telemetry's last-seen state) survive a
re-registration. Every write is conditional on the version read before it (optimistic
concurrency; ``attribute_not_exists`` for a new device), so two writers can never interleave.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import orjson

from ig3.devices.model import DeviceRecord
from ig3.errors import Conflict

_PRIVATE = ("cert_arn", "pending_revocations")


class DeviceStore(Protocol):
    def get(self, device_id: str) -> DeviceRecord | None: ...
    def write(self, record: DeviceRecord, expected_version: int | None) -> None: ...
    def delete(self, device_id: str, expected_version: int) -> None: ...


class VersionConflict(Conflict):
    code = "registration_conflict"


def record_to_item_values(record: DeviceRecord) -> dict[str, dict[str, Any]]:
    values: dict[str, dict[str, Any]] = {
        "did": {"S": record.did},
        "owner": {"S": record.owner},
        "status": {"S": record.status},
        "thing_name": {"S": record.thing_name},
        "version": {"N": str(record.version)},
        "updated_at": {"N": repr(record.updated_at)},
        "registered_at": {"N": repr(record.registered_at)},
        "doc": {"S": orjson.dumps(record.public_view()).decode()},
        "pending_revocations": {"L": [{"S": c} for c in record.pending_revocations]},
    }
    for name in ("region", "cert_id", "cert_arn", "policy_name"):
        value = getattr(record, name)
        values[name] = {"S": value} if value else {"NULL": True}
    return values


def record_from_item(item: dict[str, Any]) -> DeviceRecord:
    data = orjson.loads(item["doc"]["S"])
    if item.get("cert_arn", {}).get("S"):
        data["cert_arn"] = item["cert_arn"]["S"]
    data["pending_revocations"] = [v["S"] for v in item.get("pending_revocations", {}).get("L", [])]
    data["version"] = int(item["version"]["N"])
    return DeviceRecord.model_validate(data)


class DynamoDeviceStore:
    def __init__(self, table_name: str, client: Any | None = None):
        self.table_name = table_name
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("dynamodb")
        return self._client

    def get(self, device_id: str) -> DeviceRecord | None:
        item = self.client.get_item(
            TableName=self.table_name, Key={"device_id": {"S": device_id}}, ConsistentRead=True
        ).get("Item")
        return record_from_item(item) if item and "doc" in item else None

    def write(self, record: DeviceRecord, expected_version: int | None) -> None:
        values = record_to_item_values(record)
        names = {f"#a{i}": k for i, k in enumerate(values)}
        expr_values = {f":v{i}": v for i, v in enumerate(values.values())}
        update = "SET " + ", ".join(f"#a{i} = :v{i}" for i in range(len(values)))
        if expected_version is None:
            condition = "attribute_not_exists(device_id) OR attribute_not_exists(doc)"
        else:
            condition = "#ver = :expected"
            names["#ver"] = "version"
            expr_values[":expected"] = {"N": str(expected_version)}
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key={"device_id": {"S": record.device_id}},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=expr_values,
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            raise VersionConflict(
                "the device record changed concurrently; retry with a new challenge"
            ) from None

    def delete(self, device_id: str, expected_version: int) -> None:
        try:
            self.client.delete_item(
                TableName=self.table_name,
                Key={"device_id": {"S": device_id}},
                ConditionExpression="#ver = :expected",
                ExpressionAttributeNames={"#ver": "version"},
                ExpressionAttributeValues={":expected": {"N": str(expected_version)}},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            raise VersionConflict("the device record changed concurrently") from None


class MemoryDeviceStore:
    def __init__(self) -> None:
        self.records: dict[str, DeviceRecord] = {}
        self._lock = threading.Lock()

    def get(self, device_id: str) -> DeviceRecord | None:
        return self.records.get(device_id)

    def write(self, record: DeviceRecord, expected_version: int | None) -> None:
        with self._lock:
            current = self.records.get(record.device_id)
            if (current is None) != (expected_version is None) or (
                current and current.version != expected_version
            ):
                raise VersionConflict("the device record changed concurrently")
            self.records[record.device_id] = record

    def delete(self, device_id: str, expected_version: int) -> None:
        with self._lock:
            current = self.records.get(device_id)
            if current is None or current.version != expected_version:
                raise VersionConflict("the device record changed concurrently")
            del self.records[device_id]
