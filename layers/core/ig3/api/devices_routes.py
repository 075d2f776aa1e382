"""The network's devices and models: ``GET /v1/devices``, ``GET /v1/devices/{id}``, ``GET /v1/catalogue``,
and the operators' ``GET /v1/audit/quarantine`` (scope ``operator``).

The durable registry is DynamoDB (``devices``); live state (load, models, online) is Redis.
"""
from __future__ import annotations

import base64

import orjson
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from ig3 import config
from ig3.api.http import json_response
from ig3.errors import BadRequest, NotFound

router = APIGatewayRouter()
MAX_PAGE = 100


def _live():
    from ig3.tasks.wiring import live_state

    return live_state()


def _ddb():
    from ig3.aws import client

    return client("dynamodb")


def _record_view(item: dict) -> dict:
    doc = orjson.loads(item["doc"]["S"]) if "doc" in item else {k: next(iter(v.values())) for k, v in item.items()}
    return doc


@router.get("/v1/devices")
def list_devices():
    event = router.current_event
    try:
        limit = int(event.get_query_string_value("limit", default_value=str(MAX_PAGE)))
    except ValueError:
        raise BadRequest("limit must be an integer", code="invalid_parameter") from None
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}", code="invalid_parameter")
    args = {"TableName": config.table_name("devices"), "Limit": limit}
    cursor = event.get_query_string_value("cursor", default_value=None)
    if cursor:
        try:
            args["ExclusiveStartKey"] = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        except ValueError:
            raise BadRequest("invalid cursor", code="invalid_parameter") from None
    page = _ddb().scan(**args)
    live = _live()
    devices = []
    for item in page.get("Items", []):
        record = _record_view(item)
        device_id = record.get("device_id")
        devices.append({**record, "live": live.get(device_id) if device_id else None})
    body = {"devices": devices}
    if page.get("LastEvaluatedKey"):
        body["next_cursor"] = base64.urlsafe_b64encode(orjson.dumps(page["LastEvaluatedKey"])).decode()
    return json_response(200, body)


@router.get("/v1/devices/<device_id>")
def get_device(device_id: str):
    item = _ddb().get_item(TableName=config.table_name("devices"), Key={"device_id": {"S": device_id}}).get("Item")
    live = _live().get(device_id)
    if item is None and live is None:
        raise NotFound(f"no device {device_id}", code="device_not_found")
    record = _record_view(item) if item else {"device_id": device_id, "registered": False}
    return json_response(200, {**record, "live": live, "reputation": _audit_view().view(device_id)})


def _audit_view():
    """Reputation reads (issue #13): the store only, no queue, auditor or events needed."""
    from ig3.audit.service import AuditService
    from ig3.audit.wiring import reputation_store
    from ig3.events import MemoryEventPublisher

    return AuditService(store=reputation_store(), queue=None, events=MemoryEventPublisher())


@router.get("/v1/audit/quarantine")
def quarantined_devices():
    """Operators: devices in quarantine (or on probation after one), with the evidence that put them there."""
    from ig3.api.http import current_principal

    current_principal(router).require_scope("operator")
    return json_response(200, {"devices": _audit_view().quarantine_list()})


@router.get("/v1/catalogue")
def catalogue():
    """Which models run where: devices, regions and free capacity per model."""
    return json_response(200, {"models": _live().catalogue()})
