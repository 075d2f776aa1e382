"""API keys: ``POST /v1/keys`` (the key is in this response only), ``GET /v1/keys``, ``DELETE /v1/keys/{id}``.

A key acts for its owner (the caller's wallet or DID) with the scopes it was given, never more
than the creating credential holds. Listing shows ids, names, scopes, limits — never keys or hashes.
"""
from __future__ import annotations

from aws_lambda_powertools.event_handler.router import APIGatewayRouter
from pydantic import BaseModel, ConfigDict, Field

from ig3.api.http import current_principal, json_response, parse_body
from ig3.errors import Forbidden
from ig3.observability import logger

router = APIGatewayRouter()
KEYS_SCOPE = "keys"
DEFAULT_KEY_SCOPES = ["llm"]


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="", max_length=128)
    scopes: list[str] = Field(default_factory=lambda: list(DEFAULT_KEY_SCOPES), min_length=1, max_length=32)
    expires_in_s: int | None = Field(default=None, ge=60, le=5 * 365 * 86400)
    rpm_limit: int | None = Field(default=None, ge=1, le=10_000_000)
    tpm_limit: int | None = Field(default=None, ge=1, le=10_000_000_000)
    budget: int | None = Field(default=None, ge=0, le=10**18)  # smallest iG3 credit unit


def _service():
    from ig3.identity.service import api_key_service

    return api_key_service()


def _owner_principal():
    p = current_principal(router)
    if p.kind == "device":
        raise Forbidden("devices cannot manage API keys", code="user_credentials_required")
    p.require_scope(KEYS_SCOPE)
    return p


@router.post("/v1/keys")
def create_key():
    p = _owner_principal()
    body = parse_body(router, CreateKey)
    key, record = _service().create(p.subject, name=body.name, scopes=body.scopes, caller_scopes=p.scopes,
                                    expires_in_s=body.expires_in_s, rpm_limit=body.rpm_limit,
                                    tpm_limit=body.tpm_limit, budget=body.budget)
    logger.info("api key created", extra={"key_id": record.key_id, "owner": record.owner})
    return json_response(201, {**record.public(), "key": key}, headers={"cache-control": "no-store"})


@router.get("/v1/keys")
def list_keys():
    p = _owner_principal()
    return json_response(200, {"data": [r.public() for r in _service().list(p.subject)]})


@router.delete("/v1/keys/<key_id>")
def revoke_key(key_id: str):
    p = _owner_principal()
    record = _service().revoke(p.subject, key_id)
    logger.info("api key revoked", extra={"key_id": record.key_id, "owner": record.owner})
    return json_response(200, {**record.public(), "revoked": True})
