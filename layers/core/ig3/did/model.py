"""The DID document model every resolver returns (peaq's protobuf ``Document``, plus metadata).

The fields mirror peaq's ``document.Document`` message (id, controller, verification_methods,
signature, services, authentications) so a document read from the chain and one from the local
registry are the same object. Three metadata fields come from the pallet's Attribute around it:

- ``created_ms``: the attribute's ``created`` (pallet timestamp, milliseconds);
- ``validity_block``: the attribute's ``validity`` — the last block it is valid at
  (``u32::MAX`` = no expiry), as the pallet stores it;
- ``expires_at``: the same bound as epoch seconds, which is what callers compare with. A chain
  resolver derives it from the current block and the block time; the local registry stores it.

Pure data: no I/O.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

SECP256K1_RECOVERY_2020 = "EcdsaSecp256k1RecoveryMethod2020"
ED25519_2020 = "Ed25519VerificationKey2020"
SR25519_2020 = "Sr25519VerificationKey2020"
KEY_TYPES = (SECP256K1_RECOVERY_2020, ED25519_2020, SR25519_2020)
NO_EXPIRY_BLOCK = 2**32 - 1  # the pallet's "valid forever" (BlockNumber::max_value() for u32)


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VerificationMethod(_Doc):
    id: str
    type: str
    controller: str = ""
    public_key_multibase: str = ""


class Service(_Doc):
    id: str
    type: str
    service_endpoint: str | None = None
    data: str | None = None


class DocumentSignature(_Doc):
    type: str
    issuer: str
    hash: str


class DidDocument(_Doc):
    id: str
    controller: str = ""
    verification_methods: tuple[VerificationMethod, ...] = ()
    authentications: tuple[str, ...] = ()
    services: tuple[Service, ...] = ()
    signature: DocumentSignature | None = None
    # Attribute metadata (see module docstring).
    created_ms: int | None = None
    validity_block: int | None = None
    expires_at: float | None = Field(default=None, description="epoch seconds; None = no expiry")

    def is_expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at

    def absolute(self, ref: str) -> str:
        """A DID URL relative to this document (``#keys-1``) made absolute."""
        return self.id + ref if ref.startswith("#") else ref

    def method(self, ref: str) -> VerificationMethod | None:
        target = self.absolute(ref)
        for vm in self.verification_methods:
            if self.absolute(vm.id) == target:
                return vm
        return None
