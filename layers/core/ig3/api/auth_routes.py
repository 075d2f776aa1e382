"""Sign-in: ``GET /v1/auth/nonce``, ``POST /v1/auth/login`` (SIWE, EIP-4361) and DID login.

Each route parses its body, calls one identity function and returns a token; every failure is
an ``ig3.errors`` DomainError (401 with a specific ``code``). Tokens and signatures are never logged.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Literal

from aws_lambda_powertools.event_handler.router import APIGatewayRouter
from pydantic import BaseModel, ConfigDict, Field

from ig3.api.http import json_response, parse_body
from ig3.observability import logger

router = APIGatewayRouter()
WALLET_SCOPES = ("*",)  # a wallet's (or an agent DID's) own session may do everything its account may do
DEVICE_SCOPES = ("device",)


class SiweLogin(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = Field(min_length=1, max_length=8192)
    signature: str = Field(min_length=2, max_length=4096)


def _token_response(subject: str, principal_type: str, scopes: tuple[str, ...], extra: dict) -> object:
    from ig3.identity.service import settings, token_service

    token, ttl = token_service().issue(subject, principal_type, scopes, settings().default_tier)
    return json_response(200, {"access_token": token, "token_type": "Bearer", "expires_in": ttl,
                               "scope": " ".join(scopes), **extra}, headers={"cache-control": "no-store"})


@router.get("/v1/auth/nonce")
def siwe_nonce():
    from ig3.identity.service import nonce_store, settings
    from ig3.identity.wallet_login import SIWE_PURPOSE

    s = settings()
    nonce = nonce_store().issue(SIWE_PURPOSE, "", s.nonce_ttl_s)
    expires = datetime.now(timezone.utc) + timedelta(seconds=s.nonce_ttl_s)
    return json_response(200, {"nonce": nonce, "expires_at": expires.isoformat().replace("+00:00", "Z"),
                               "domain": s.public_host, "chain_ids": sorted(s.siwe_chain_ids)},
                         headers={"cache-control": "no-store"})


@router.post("/v1/auth/login")
def siwe_login():
    from ig3.identity.service import siwe_verifier

    body = parse_body(router, SiweLogin)
    who = siwe_verifier().verify(body.message, body.signature)
    logger.info("wallet signed in", extra={"address": who.address, "chain_id": who.chain_id, "via": who.via})
    return _token_response(who.address, "wallet", WALLET_SCOPES, {"address": who.address, "chain_id": who.chain_id})


class DidChallengeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    did: str = Field(min_length=1, max_length=256)


class DidLoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    did: str = Field(min_length=1, max_length=256)
    nonce: str = Field(min_length=8, max_length=128)
    signature: str = Field(min_length=2, max_length=1024)
    # "agent": the DID is its own account (user routes); "device": a registered device (device routes).
    principal: Literal["agent", "device"] = "agent"


@router.post("/v1/auth/did/challenge")
def did_challenge():
    from ig3.identity.service import did_login

    body = parse_body(router, DidChallengeRequest)
    ch = did_login().challenge(body.did)
    expires = datetime.fromtimestamp(ch.expires_at, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    return json_response(200, {"did": ch.did, "nonce": ch.nonce, "message": ch.message, "expires_at": expires},
                         headers={"cache-control": "no-store"})


@router.post("/v1/auth/did/login")
def did_login_route():
    from ig3.identity.service import did_login

    body = parse_body(router, DidLoginRequest)
    who = did_login().login(body.did, body.nonce, body.signature, as_device=body.principal == "device")
    logger.info("DID signed in", extra={"did": who.did, "principal_type": who.principal_type})
    scopes = DEVICE_SCOPES if who.principal_type == "device" else WALLET_SCOPES
    return _token_response(who.subject, who.principal_type, scopes, {"did": who.did, "principal_type": who.principal_type})
