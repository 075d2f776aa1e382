"""Single-use registration nonces and per-device registration leases — port and adapters.

One DynamoDB table (``device_challenges``, pk ``id``, TTL attribute ``ttl``) holds two kinds
of short-lived items:

- ``nonce#<nonce>``: a challenge bound to a DID, a chain id and the gateway's domain, with an
  ``expires_at`` (≤ 5 min). ``consume`` is one conditional ``DeleteItem`` (exists, same DID,
  unexpired): of any number of concurrent uses exactly one wins, and the item is gone after.
  DynamoDB's TTL sweeps abandoned items later (``ttl`` = expiry + 1 h); expiry is enforced by the
  condition, never by the sweeper (which may lag by days).
- ``lease#<thing>``: serialises provisioning of one device (two registrations of the same DID
  racing with different nonces). A conditional put that succeeds only when no live lease exists;
  released by a conditional delete on the owner's token; a crashed holder's lease just expires.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from ig3.errors import BadRequest, Conflict

NONCE_TTL_MAX_S = 300
SWEEP_GRACE_S = 3600


@dataclass(frozen=True)
class Challenge:
    nonce: str
    did: str
    chain_id: int
    domain: str
    expires_at: float


class NonceRejected(BadRequest):
    """The nonce is unknown, used, expired or someone else's (the code says which)."""


class ChallengeStore(Protocol):
    def issue(self, *, did: str, chain_id: int, domain: str, ttl_s: float, now: float) -> Challenge: ...
    def peek(self, nonce: str) -> Challenge | None: ...
    def consume(self, nonce: str, did: str, now: float) -> Challenge: ...
    def acquire_lease(self, key: str, lease_s: float, now: float) -> str: ...
    def release_lease(self, key: str, token: str) -> None: ...


def new_nonce() -> str:
    return secrets.token_hex(16)


def _classify(found: Challenge | None, did: str, now: float) -> NonceRejected:
    if found is None:
        return NonceRejected(
            "the nonce is unknown or was already used; request a new challenge", code="nonce_used"
        )
    if found.did != did:
        return NonceRejected("the nonce was issued for another DID", code="nonce_did_mismatch")
    if found.expires_at <= now:
        return NonceRejected("the nonce has expired; request a new challenge", code="nonce_expired")
    return NonceRejected("the nonce was already used; request a new challenge", code="nonce_used")


class DynamoChallengeStore:
    def __init__(self, table_name: str, client: Any | None = None):
        self.table_name = table_name
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("dynamodb")
        return self._client

    def issue(self, *, did: str, chain_id: int, domain: str, ttl_s: float, now: float) -> Challenge:
        ttl_s = min(float(ttl_s), NONCE_TTL_MAX_S)
        challenge = Challenge(new_nonce(), did, int(chain_id), domain, round(now + ttl_s, 3))
        self.client.put_item(
            TableName=self.table_name,
            Item={
                "id": {"S": "nonce#" + challenge.nonce},
                "did": {"S": did},
                "chain_id": {"N": str(chain_id)},
                "domain": {"S": domain},
                "expires_at": {"N": repr(challenge.expires_at)},
                "ttl": {"N": str(int(challenge.expires_at) + SWEEP_GRACE_S)},
            },
            # 128 random bits never collide in practice; the condition makes it a guarantee.
            ConditionExpression="attribute_not_exists(id)",
        )
        return challenge

    @staticmethod
    def _challenge(item: dict[str, Any]) -> Challenge:
        return Challenge(
            nonce=item["id"]["S"].split("#", 1)[1],
            did=item["did"]["S"],
            chain_id=int(item["chain_id"]["N"]),
            domain=item["domain"]["S"],
            expires_at=float(item["expires_at"]["N"]),
        )

    def peek(self, nonce: str) -> Challenge | None:
        item = self.client.get_item(
            TableName=self.table_name, Key={"id": {"S": "nonce#" + nonce}}, ConsistentRead=True
        ).get("Item")
        return self._challenge(item) if item else None

    def consume(self, nonce: str, did: str, now: float) -> Challenge:
        try:
            old = self.client.delete_item(
                TableName=self.table_name,
                Key={"id": {"S": "nonce#" + nonce}},
                ConditionExpression="attribute_exists(id) AND did = :did AND expires_at > :now",
                ExpressionAttributeValues={":did": {"S": did}, ":now": {"N": repr(now)}},
                ReturnValues="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            raise _classify(self.peek(nonce), did, now) from None
        return self._challenge(old["Attributes"])

    def acquire_lease(self, key: str, lease_s: float, now: float) -> str:
        token = secrets.token_hex(8)
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item={
                    "id": {"S": "lease#" + key},
                    "token": {"S": token},
                    "lease_until": {"N": repr(now + lease_s)},
                    "ttl": {"N": str(int(now + lease_s) + SWEEP_GRACE_S)},
                },
                ConditionExpression="attribute_not_exists(id) OR lease_until < :now",
                ExpressionAttributeValues={":now": {"N": repr(now)}},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            raise Conflict(
                "another registration of this device is in progress; retry with a new challenge",
                code="registration_in_progress",
            ) from None
        return token

    def release_lease(self, key: str, token: str) -> None:
        try:
            self.client.delete_item(
                TableName=self.table_name,
                Key={"id": {"S": "lease#" + key}},
                ConditionExpression="#t = :t",
                ExpressionAttributeNames={"#t": "token"},
                ExpressionAttributeValues={":t": {"S": token}},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            pass  # expired and taken over: not ours to delete


class MemoryChallengeStore:
    """In-memory fake (unit tests); same semantics, one lock."""

    def __init__(self) -> None:
        self.nonces: dict[str, Challenge] = {}
        self.leases: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def issue(self, *, did: str, chain_id: int, domain: str, ttl_s: float, now: float) -> Challenge:
        c = Challenge(new_nonce(), did, int(chain_id), domain, round(now + min(ttl_s, NONCE_TTL_MAX_S), 3))
        with self._lock:
            self.nonces[c.nonce] = c
        return c

    def peek(self, nonce: str) -> Challenge | None:
        return self.nonces.get(nonce)

    def consume(self, nonce: str, did: str, now: float) -> Challenge:
        with self._lock:
            found = self.nonces.get(nonce)
            if found is None or found.did != did or found.expires_at <= now:
                raise _classify(found, did, now)
            return self.nonces.pop(nonce)

    def acquire_lease(self, key: str, lease_s: float, now: float) -> str:
        with self._lock:
            held = self.leases.get(key)
            if held and held[1] >= now:
                raise Conflict(
                    "another registration of this device is in progress", code="registration_in_progress"
                )
            token = secrets.token_hex(8)
            self.leases[key] = (token, now + lease_s)
            return token

    def release_lease(self, key: str, token: str) -> None:
        with self._lock:
            if self.leases.get(key, ("",))[0] == token:
                del self.leases[key]
