"""Money routes, always for the calling principal: balance, usage statement (JSON or CSV), node rewards.

- ``GET /v1/billing/balance`` -> ``{account, total, held, available, unit}`` in micro-credits.
- ``GET /v1/billing/usage?since&until&model&limit&cursor&format=csv`` -> the account's ledger
  (usage charges and deposits), newest first. ``since``/``until`` are ISO-8601 or Unix seconds
  (``until`` exclusive); ``cursor`` is opaque (the previous page's ``next_cursor``; for CSV
  the ``X-Next-Cursor`` header).
- ``GET /v1/rewards/{device}?epoch&limit`` -> published epoch rewards of a device the caller
  owns (or the device itself). Someone else's device answers 404, like a missing one, so the
  route does not reveal which devices exist.
"""

from __future__ import annotations

import base64
import csv
import io
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from ig3.api.http import current_principal, json_response
from ig3.billing.models import LedgerEntry
from ig3.errors import BadRequest, NotFound

router = APIGatewayRouter()
MAX_PAGE = 500
MAX_CSV_PAGE = 5000
CSV_COLUMNS = (
    "time",
    "entry_id",
    "kind",
    "reference",
    "amount",
    "requested_amount",
    "model",
    "route",
    "usage_kind",
    "device",
    "prompt_tokens",
    "completion_tokens",
    "sagemaker_ms",
    "duration_ms",
    "key_id",
)


def _billing():
    from ig3.billing.wiring import billing_service

    return billing_service()


def _rewards_store():
    from ig3.billing.rewards_store import DynamoRewardsStore

    return DynamoRewardsStore.from_env()


def _rewards_config():
    from ig3.billing.rewards import RewardsConfig

    return RewardsConfig.from_env()


def _query(name: str) -> str | None:
    value = router.current_event.get_query_string_value(name, default_value=None)
    return value if value not in (None, "") else None


def _time_ms(name: str) -> int | None:
    raw = _query(name)
    if raw is None:
        return None
    try:
        return (
            int(float(raw) * 1000)
            if raw.replace(".", "", 1).isdigit()
            else int(datetime.fromisoformat(raw.replace("Z", "+00:00")).astimezone(UTC).timestamp() * 1000)
        )
    except (ValueError, OverflowError):
        raise BadRequest(f"{name} must be ISO-8601 or Unix seconds", code="invalid_parameter") from None


def _int_param(name: str, default: int, lo: int, hi: int) -> int:
    raw = _query(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer", code="invalid_parameter") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}", code="invalid_parameter")
    return value


def _encode_cursor(ts_key: str | None) -> str | None:
    return base64.urlsafe_b64encode(ts_key.encode()).decode().rstrip("=") if ts_key else None


def _decode_cursor(raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        key = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except ValueError:
        raise BadRequest("invalid cursor", code="invalid_parameter") from None
    head, sep, tail = key.partition("#")
    if not (sep and head.isdigit() and len(head) == 15 and tail):
        raise BadRequest("invalid cursor", code="invalid_parameter")
    return key


def _entry_view(e: LedgerEntry) -> dict[str, Any]:
    d = e.details
    view = {
        "time": datetime.fromtimestamp(e.ts_ms / 1000, UTC).isoformat().replace("+00:00", "Z"),
        "entry_id": e.entry_id,
        "kind": e.kind,
        "reference": e.reference,
        "amount": e.amount,
        "requested_amount": e.requested_amount,
    }
    for k in (
        "model",
        "route",
        "usage_kind",
        "device",
        "prompt_tokens",
        "completion_tokens",
        "sagemaker_ms",
        "duration_ms",
        "key_id",
    ):
        view[k] = d.get(k)
    return view


@router.get("/v1/billing/balance")
def get_balance():
    principal = current_principal(router)
    return json_response(200, _billing().balance(principal.subject).as_dict())


@router.get("/v1/billing/usage")
def get_usage():
    principal = current_principal(router)
    fmt = (_query("format") or "json").lower()
    if fmt not in ("json", "csv"):
        raise BadRequest("format must be json or csv", code="invalid_parameter")
    limit = _int_param("limit", 1000 if fmt == "csv" else 100, 1, MAX_CSV_PAGE if fmt == "csv" else MAX_PAGE)
    since, until = _time_ms("since"), _time_ms("until")
    if since is not None and until is not None and since >= until:
        raise BadRequest("since must be before until", code="invalid_parameter")
    model = _query("model")
    entries, next_key = _billing().usage(
        principal.subject,
        since_ms=since,
        until_ms=until,
        model=model,
        after=_decode_cursor(_query("cursor")),
        limit=limit,
    )
    cursor = _encode_cursor(next_key)
    rows = [_entry_view(e) for e in entries]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        headers = {"Content-Disposition": 'attachment; filename="ig3-usage.csv"'}
        if cursor:
            headers["X-Next-Cursor"] = cursor
        return Response(
            status_code=200, content_type="text/csv; charset=utf-8", body=buf.getvalue(), headers=headers
        )
    return json_response(
        200,
        {
            "account": principal.subject.lower() if principal.subject.startswith("0x") else principal.subject,
            "unit": "micro-credit",
            "entries": rows,
            "next_cursor": cursor,
        },
    )


def _device_owner(device_id: str) -> str | None:
    from ig3 import config
    from ig3.aws import client
    from ig3.billing.rewards_store import _doc

    item = (
        client("dynamodb")
        .get_item(TableName=config.table_name("devices"), Key={"device_id": {"S": device_id}})
        .get("Item")
    )
    if not item:
        return None
    owner = _doc(item).get("owner")
    return str(owner) if owner else None


@router.get("/v1/rewards/<device>")
def get_rewards(device: str):
    principal = current_principal(router)
    if not (principal.kind == "device" and principal.subject == device):
        owner = _device_owner(device)
        if owner is None or owner.lower() != principal.subject.lower():
            raise NotFound(f"no device {device} for this principal", code="device_not_found")
    config = _rewards_config()
    store = _rewards_store()
    epoch = _query("epoch")
    if epoch is not None:
        try:
            n = int(epoch)
        except ValueError:
            raise BadRequest("epoch must be an integer", code="invalid_parameter") from None
        found = store.get(device, n)
        rewards = [found] if found else []
    else:
        rewards = store.recent(device, _int_param("limit", 10, 1, 100))
    current = config.epoch_of(datetime.now(UTC).timestamp())
    start, end = config.epoch_bounds(current)
    return json_response(
        200,
        {
            "device_id": device,
            "unit": "TOPS",
            "current_epoch": {"epoch": current, "start": start.isoformat(), "end": end.isoformat()},
            "rewards": [r.as_dict(config.reward_decimals) for r in rewards],
        },
    )
