"""Task persistence — the port, its DynamoDB adapter and an in-memory fake.

The record is stored whole as one JSON attribute (``doc``) beside the key and the attributes
conditions need (``status``, ``version``, ``expires_at``): no float/Decimal conversion on the hot
path and one conditional ``PutItem`` per transition (``version = :read_version``).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Protocol

import orjson

from ig3.tasks.model import Task

RETENTION_S = 30 * 24 * 3600  # terminal tasks expire (DynamoDB TTL) after 30 days


class StaleWrite(Exception):
    """The stored record changed since it was read (or already exists, for create)."""


class TaskStore(Protocol):
    def create(self, task: Task) -> None: ...
    def get(self, task_id: str) -> Task | None: ...
    def replace(self, new: Task, *, expected_version: int) -> None: ...
    def delete(self, task_id: str, *, expected_version: int) -> None: ...


class DynamoTaskStore:
    def __init__(self, table_name: str, client: Any | None = None):
        self._table = table_name
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("dynamodb")
        return self._client

    def _item(self, task: Task) -> dict[str, Any]:
        return {
            "task_id": {"S": task.task_id},
            "status": {"S": task.status.value},
            "version": {"N": str(task.version)},
            "expires_at": {"N": str(int(task.created_at) + RETENTION_S)},
            "doc": {"S": orjson.dumps(task.model_dump(mode="json", exclude_none=True)).decode()},
        }

    def create(self, task: Task) -> None:
        try:
            self.client.put_item(TableName=self._table, Item=self._item(task),
                                 ConditionExpression="attribute_not_exists(task_id)")
        except self.client.exceptions.ConditionalCheckFailedException:
            raise StaleWrite(task.task_id) from None

    def get(self, task_id: str) -> Task | None:
        resp = self.client.get_item(TableName=self._table, Key={"task_id": {"S": task_id}}, ConsistentRead=True)
        item = resp.get("Item")
        if not item:
            return None
        return Task.model_validate(orjson.loads(item["doc"]["S"]))

    def replace(self, new: Task, *, expected_version: int) -> None:
        try:
            self.client.put_item(TableName=self._table, Item=self._item(new),
                                 ConditionExpression="#v = :v",
                                 ExpressionAttributeNames={"#v": "version"},
                                 ExpressionAttributeValues={":v": {"N": str(expected_version)}})
        except self.client.exceptions.ConditionalCheckFailedException:
            raise StaleWrite(new.task_id) from None

    def delete(self, task_id: str, *, expected_version: int) -> None:
        try:
            self.client.delete_item(TableName=self._table, Key={"task_id": {"S": task_id}},
                                    ConditionExpression="#v = :v", ExpressionAttributeNames={"#v": "version"},
                                    ExpressionAttributeValues={":v": {"N": str(expected_version)}})
        except self.client.exceptions.ConditionalCheckFailedException:
            raise StaleWrite(task_id) from None


class MemoryTaskStore:
    """In-memory fake with the same conditional semantics (unit tests, property tests)."""

    def __init__(self) -> None:
        self._docs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def create(self, task: Task) -> None:
        with self._lock:
            if task.task_id in self._docs:
                raise StaleWrite(task.task_id)
            self._docs[task.task_id] = orjson.dumps(task.model_dump(mode="json"))

    def get(self, task_id: str) -> Task | None:
        with self._lock:
            doc = self._docs.get(task_id)
        return Task.model_validate(orjson.loads(doc)) if doc else None

    def replace(self, new: Task, *, expected_version: int) -> None:
        with self._lock:
            doc = self._docs.get(new.task_id)
            if doc is None or orjson.loads(doc)["version"] != expected_version:
                raise StaleWrite(new.task_id)
            self._docs[new.task_id] = orjson.dumps(new.model_dump(mode="json"))

    def delete(self, task_id: str, *, expected_version: int) -> None:
        with self._lock:
            doc = self._docs.get(task_id)
            if doc is None or orjson.loads(doc)["version"] != expected_version:
                raise StaleWrite(task_id)
            del self._docs[task_id]


def now() -> float:
    return time.time()
