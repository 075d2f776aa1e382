"""Request parsing and the caller's identity for Powertools routers.

Handlers stay a few lines: ``body = parse_body(app, Model)``, call one logic function,
return ``json_response(...)``. Domain errors become HTTP in ``ig3.api.app`` only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aws_lambda_powertools.event_handler import Response, content_types
from pydantic import BaseModel, ValidationError

from ig3.errors import BadRequest, Forbidden, PayloadTooLarge, Unauthorized, validation_message

MAX_BODY_BYTES = 256 * 1024
M = TypeVar("M", bound=BaseModel)


def parse_body(resolver: Any, model: type[M]) -> M:
    event = resolver.current_event
    try:
        raw = event.decoded_body if event.body is not None else None
    except ValueError:  # bytes that are not UTF-8 (the front base64-encodes them): not JSON either
        raise BadRequest("request body is not valid JSON", code="invalid_json") from None
    if raw is None or raw == "":
        raise BadRequest("request body is required", code="missing_body")
    if len(raw.encode() if isinstance(raw, str) else raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body exceeds {MAX_BODY_BYTES} bytes")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(validation_message(exc), code="validation_error") from None


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    if isinstance(body, BaseModel):
        payload = body.model_dump_json(exclude_none=True)
    else:
        payload = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS).decode()  # e.g. {ctx length: devices}
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=payload,
                    headers=headers or {})


@dataclass(frozen=True)
class Principal:
    """Who is calling, as the Lambda authorizer put it in the request context.

    ``kind``: ``wallet`` (SIWE login), ``did`` (DID login), ``apikey`` (acts for its wallet),
    ``device`` (an M1 acting as a device). ``subject``: the wallet address / DID / device id.
    """

    subject: str
    kind: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    tier: str = "standard"
    key_id: str | None = None
    # Per-key limits stored on an API key (None: none set); enforced by the LLM gateway / billing.
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    budget: int | None = None  # smallest iG3 credit unit

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes and "*" not in self.scopes:
            raise Forbidden(f"this credential lacks the '{scope}' scope", code="insufficient_scope")


def current_principal(resolver: Any, *, required: bool = True) -> Principal | None:
    ctx = resolver.current_event.request_context.authorizer or {}
    raw = dict(ctx) if ctx else {}
    subject = raw.get("principal") or raw.get("principalId")
    if not subject:
        if required:
            raise Unauthorized("missing or invalid credentials", code="unauthorized")
        return None
    scopes = frozenset(str(raw.get("scopes", "")).split())
    return Principal(subject=str(subject), kind=str(raw.get("principal_type", "wallet")), scopes=scopes,
                     tier=str(raw.get("tier", "standard")), key_id=raw.get("key_id") or None,
                     rpm_limit=_opt_int(raw.get("rpm_limit")), tpm_limit=_opt_int(raw.get("tpm_limit")),
                     budget=_opt_int(raw.get("budget")))


def _opt_int(value: Any) -> int | None:
    # API Gateway hands authorizer context values over as strings; absent or "" means no limit.
    if value is None or value == "":
        return None
    return int(value)
