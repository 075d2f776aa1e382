"""Registration requests, responses and the device record (pydantic; no I/O).

Limits are part of the contract: a registration is one DynamoDB item (400 KB max) and rides in
every ``GET /v1/devices`` page, so capabilities and models are bounded well below that
(``MAX_CAPABILITIES_BYTES``, ``MAX_MODELS``). Oversized payloads are refused with 413 before
anything is read or written.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ig3.wire import Location, ModelInfo

NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
REGION_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
CAPABILITY_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_CAPABILITIES_BYTES = 8 * 1024
MAX_CAPABILITY_KEYS = 64
MAX_MODELS = 32
MAX_MODELS_BYTES = 32 * 1024

CapabilityValue = str | int | float | bool | list[str]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChallengeRequest(_In):
    did: str = Field(max_length=128)
    chain_id: int | None = Field(default=None, ge=1, le=2**53)


class ChallengeResponse(BaseModel):
    nonce: str
    expires_at: float
    domain: str
    chain_id: int
    did: str


class RegisterRequest(_In):
    did: str = Field(max_length=128)
    nonce: str = Field(max_length=64)
    signature: str = Field(max_length=200)
    capabilities: dict[str, CapabilityValue] = Field(default_factory=dict)
    models: list[ModelInfo] = Field(default_factory=list)
    location: Location | None = None
    owner: str
    region: str | None = None
    chain_id: int | None = Field(default=None, ge=1, le=2**53)

    @field_validator("nonce")
    @classmethod
    def _nonce(cls, v: str) -> str:
        if not NONCE_RE.match(v):
            raise ValueError("nonce must be the 32 hex characters a challenge returned")
        return v

    @field_validator("owner")
    @classmethod
    def _owner(cls, v: str) -> str:
        if not ADDRESS_RE.match(v):
            raise ValueError("owner must be a 0x wallet address")
        from ig3.did.ids import to_checksum_address

        checksummed = to_checksum_address(v)
        hex_part = v[2:]
        if hex_part not in (hex_part.lower(), hex_part.upper()) and v != checksummed:
            raise ValueError("owner address has an invalid EIP-55 checksum")
        # Stored EIP-55, as wallet principals (SIWE) name it, so the by_owner index matches them.
        return checksummed

    @field_validator("region")
    @classmethod
    def _region(cls, v: str | None) -> str | None:
        if v is not None and not REGION_RE.match(v):
            raise ValueError("region must be lowercase letters, digits and dashes (max 32)")
        return v

    @field_validator("capabilities")
    @classmethod
    def _capability_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if not CAPABILITY_KEY_RE.match(key):
                raise ValueError(f"capability name {key[:64]!r} is not [A-Za-z0-9_.:-]{{1,64}}")
        return v


def payload_sizes(req: RegisterRequest) -> tuple[int, int, int]:
    """(capability JSON bytes, capability keys, model JSON bytes) — checked against the limits above."""
    caps = req.model_dump(mode="json", include={"capabilities"})["capabilities"]
    models = req.model_dump(mode="json", include={"models"})["models"]
    return len(orjson.dumps(caps)), len(caps), len(orjson.dumps(models))


class Credentials(BaseModel):
    """What the device receives once: its certificate and private key (never stored, never logged)."""

    certificate_id: str
    certificate_arn: str
    certificate_pem: str
    private_key: str
    public_key: str


class DeviceRecord(BaseModel):
    """The durable registry entry (DynamoDB ``devices``; pk ``device_id`` = the IoT thing name)."""

    model_config = ConfigDict(extra="ignore")

    device_id: str
    thing_name: str
    did: str
    owner: str
    owner_verified: bool = False  # the owner wallet is the DID document's controller
    status: Literal["registered", "deregistered"] = "registered"
    region: str | None = None
    location: Location | None = None
    capabilities: dict[str, CapabilityValue] = Field(default_factory=dict)
    models: list[ModelInfo] = Field(default_factory=list)
    chain_id: int
    verification_method: str
    cert_id: str | None = None
    cert_arn: str | None = None
    policy_name: str | None = None
    thing_group: str | None = None
    pending_revocations: list[str] = Field(default_factory=list)
    registered_at: float
    updated_at: float
    deregistered_at: float | None = None
    registrations: int = 1
    version: int = 1

    def public_view(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"pending_revocations", "cert_arn"}, exclude_none=True)


class RegisterResponse(BaseModel):
    device_id: str
    thing_name: str
    did: str
    status: str
    rotated: bool
    verification_method: str
    iot_endpoint: str | None
    topics: dict[str, str]
    credentials: Credentials
    device: dict[str, Any]
