"""DID login for agents and devices acting as clients: the device-registration challenge–response,
reusing its resolver (``ig3.did.resolvers``) and verifier (``ig3.did.verify.verify_did_signature``).

Flow: ``challenge(did)`` issues a single-use nonce bound to the DID and its expiry and returns
the exact text to sign; ``login(did, nonce, signature)`` rebuilds that text, resolves the DID
document, verifies the signature against its authentication methods, and only then consumes
the nonce atomically (an invalid signature does not burn it; of two concurrent logins one wins).

The text differs from the registration message in its first line ("sign in" vs "register a
device"), so a registration signature can never be replayed as a login or the other way round.

``as_device=True`` asks for device credentials: granted only when the DID belongs to a
registered device (the devices table's ``by_did`` index); the token's subject is then the
device id and it opens device routes only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from ig3.errors import Forbidden, NotFound, Unauthorized
from ig3.identity.nonces import NonceStore

DID_PURPOSE = "did"
LOGIN_STATEMENT = "iG3 sign-in"


def did_login_message(*, domain: str, did: str, nonce: str, chain_id: int, expires_at: float) -> bytes:
    expiry = datetime.fromtimestamp(int(expires_at), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (f"{domain} wants you to sign in with your peaq DID:\n{did}\n\n{LOGIN_STATEMENT}\n\n"
            f"Version: 1\nChain ID: {int(chain_id)}\nNonce: {nonce}\nExpiration Time: {expiry}").encode()


@dataclass(frozen=True)
class DidChallenge:
    did: str
    nonce: str
    message: str
    expires_at: float


@dataclass(frozen=True)
class DidIdentity:
    subject: str  # the DID, or the device id for device credentials
    principal_type: str  # "did" | "device"
    did: str
    method: str  # the verification method that signed


class DidLogin:
    def __init__(self, *, domain: str, chain_id: int, nonces: NonceStore, resolver: Callable[[], Any],
                 device_of: Callable[[str], str | None] | None = None, ttl_s: int = 300,
                 clock: Callable[[], float] = time.time):
        self._domain = domain
        self._chain = chain_id
        self._nonces = nonces
        self._resolver = resolver  # a factory: the resolver is built on first use (web3 for peaq)
        self._device_of = device_of
        self._ttl = ttl_s
        self._clock = clock

    @staticmethod
    def _canonical(did: str) -> str:
        from ig3.did.ids import parse_did

        return parse_did(did).did  # BadRequest(invalid_did) for a malformed DID

    def challenge(self, did: str) -> DidChallenge:
        canonical = self._canonical(did)
        expires_at = int(self._clock()) + self._ttl
        nonce = self._nonces.issue(DID_PURPOSE, f"{expires_at}|{canonical}", self._ttl)
        message = did_login_message(domain=self._domain, did=canonical, nonce=nonce, chain_id=self._chain,
                                    expires_at=expires_at)
        return DidChallenge(canonical, nonce, message.decode(), float(expires_at))

    def login(self, did: str, nonce: str, signature: str, *, as_device: bool = False) -> DidIdentity:
        from ig3.did.verify import verify_did_signature

        canonical = self._canonical(did)
        bound = self._nonces.peek(DID_PURPOSE, nonce)
        if bound is None:
            raise Unauthorized("nonce unknown, expired or already used: request a new challenge",
                               code="invalid_nonce")
        expires_s, _, bound_did = bound.partition("|")
        if bound_did != canonical:
            raise Unauthorized("this nonce was issued for another DID", code="nonce_did_mismatch")
        if float(expires_s) <= self._clock():
            raise Unauthorized("the challenge has expired: request a new one", code="invalid_nonce")
        message = did_login_message(domain=self._domain, did=canonical, nonce=nonce, chain_id=self._chain,
                                    expires_at=float(expires_s))
        try:
            document = self._resolver().resolve(canonical)
        except NotFound:
            raise Unauthorized("no DID document found for this DID", code="unknown_did") from None
        method = verify_did_signature(document, message, signature, chain_id=self._chain)
        subject, ptype = canonical, "did"
        if as_device:
            device_id = self._device_of(canonical) if self._device_of else None
            if device_id is None:
                raise Forbidden("this DID is not a registered device: register it first (POST /v1/devices/register)",
                                code="not_a_device")
            subject, ptype = device_id, "device"
        if self._nonces.consume(DID_PURPOSE, nonce) is None:
            raise Unauthorized("nonce already used", code="invalid_nonce")
        return DidIdentity(subject=subject, principal_type=ptype, did=canonical, method=method)


class DynamoDeviceDirectory:
    """Registered device id for a DID, from the devices table's ``by_did`` GSI (``device_id``, ``status``)."""

    def __init__(self, table_name: str, client: Any | None = None):
        self._table = table_name
        self._client = client

    def __call__(self, did: str) -> str | None:
        if self._client is None:
            from ig3.aws import client

            self._client = client("dynamodb")
        resp = self._client.query(TableName=self._table, IndexName="by_did", KeyConditionExpression="did = :d",
                                  ExpressionAttributeValues={":d": {"S": did}})
        for item in resp.get("Items", []):
            if item.get("status", {}).get("S", "registered") == "registered":
                return item["device_id"]["S"]
        return None
