"""peaq DID identifiers: parsing, canonical form, and the on-chain account they name.

Two forms exist (see the peaq DID pallet and precompile):

- ``did:peaq:0x<20-byte EVM address>`` — peaqOS / EVM identities. The pallet stores the
  document under the *mapped* Substrate account ``blake2_256(b"evm:" + address)``; the EVM
  precompile ``readAttribute(address,bytes)`` performs that mapping itself.
- ``did:peaq:<SS58 address>`` — Substrate keys (ed25519 / sr25519); the account id is the
  32-byte public key carried in the SS58 string.

Canonical form (used as the device registry key and compared with a document's ``id``): the
EIP-55 checksummed address for EVM DIDs, and the SS58 string as given (its checksum verified)
for Substrate DIDs. Pure logic: hashlib, base58 and keccak (pycryptodome, ``ig3.evm.keys``) only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

import base58

from ig3.errors import BadRequest

DID_PREFIX = "did:peaq:"
MAX_DID_LENGTH = 128
_EVM_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
_SS58_RE = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{32,60}$")  # base58 alphabet
SS58_GENERIC_PREFIX = 42


@dataclass(frozen=True)
class PeaqDid:
    did: str  # canonical
    kind: Literal["evm", "substrate"]
    account_id: bytes  # 32-byte Substrate account the pallet keys the document by
    address: str | None = None  # EIP-55 address (evm) / SS58 string (substrate)
    ss58_prefix: int | None = None

    @property
    def identifier(self) -> str:
        return self.did[len(DID_PREFIX) :]


def parse_did(did: str) -> PeaqDid:
    """Parse and canonicalise a ``did:peaq`` DID; raises BadRequest(code=invalid_did)."""
    if not isinstance(did, str) or len(did) > MAX_DID_LENGTH or not did.startswith(DID_PREFIX):
        raise BadRequest("DID must be did:peaq:<0x address | SS58 address>", code="invalid_did")
    ident = did[len(DID_PREFIX) :]
    if _EVM_RE.match(ident):
        address = to_checksum_address(ident)
        hex_part = ident[2:]
        if hex_part not in (hex_part.lower(), hex_part.upper()) and ident != address:
            # Mixed case that is not the EIP-55 checksum: a typo, not an identity.
            raise BadRequest("DID address has an invalid EIP-55 checksum", code="invalid_did")
        return PeaqDid(
            did=DID_PREFIX + address, kind="evm", account_id=evm_account_id(address), address=address
        )
    if _SS58_RE.match(ident):
        try:
            prefix, account = ss58_decode(ident)
        except ValueError as exc:
            raise BadRequest(f"DID is not a valid SS58 address: {exc}", code="invalid_did") from None
        return PeaqDid(
            did=DID_PREFIX + ident, kind="substrate", account_id=account, address=ident, ss58_prefix=prefix
        )
    raise BadRequest("DID must be did:peaq:<0x address | SS58 address>", code="invalid_did")


def canonical_did(did: str) -> str:
    return parse_did(did).did


def same_did(a: str, b: str) -> bool:
    """True when both name the same identity (EVM address case is not significant)."""
    try:
        return parse_did(a).did == parse_did(b).did
    except BadRequest:
        return False


def keccak256(data: bytes) -> bytes:
    from ig3.evm.keys import keccak256 as keccak

    return keccak(data)


def to_checksum_address(address: str) -> str:
    """EIP-55 checksum of a 0x address (keccak over the lowercase hex)."""
    hex_addr = address[2:].lower()
    digest = keccak256(hex_addr.encode()).hex()
    return "0x" + "".join(c.upper() if int(digest[i], 16) >= 8 else c for i, c in enumerate(hex_addr))


def evm_account_id(address: str) -> bytes:
    """The Substrate account peaq maps an EVM address to: blake2_256(b"evm:" + address)."""
    raw = bytes.fromhex(address[2:])
    return hashlib.blake2b(b"evm:" + raw, digest_size=32).digest()


def _ss58_checksum(data: bytes) -> bytes:
    return hashlib.blake2b(b"SS58PRE" + data, digest_size=64).digest()[:2]


def ss58_encode(account_id: bytes, prefix: int = SS58_GENERIC_PREFIX) -> str:
    if len(account_id) != 32:
        raise ValueError("SS58 account ids here are 32 bytes")
    if prefix < 64:
        head = bytes([prefix])
    elif prefix < 16384:
        head = bytes([((prefix & 0b1111_1100) >> 2) | 0b0100_0000, (prefix >> 8) | ((prefix & 0b11) << 6)])
    else:
        raise ValueError("SS58 prefix out of range")
    body = head + account_id
    return base58.b58encode(body + _ss58_checksum(body)).decode()


def ss58_decode(address: str) -> tuple[int, bytes]:
    """-> (network prefix, 32-byte account id); checks the blake2b checksum."""
    try:
        data = base58.b58decode(address)
    except ValueError as exc:
        raise ValueError("not base58") from exc
    if not data:
        raise ValueError("empty")
    first = data[0]
    if first < 64:
        prefix, head_len = first, 1
    elif first < 128:
        if len(data) < 2:
            raise ValueError("truncated prefix")
        lower = ((first << 2) | (data[1] >> 6)) & 0xFF
        prefix, head_len = lower | ((data[1] & 0b0011_1111) << 8), 2
    else:
        raise ValueError("reserved SS58 prefix")
    body = data[:-2]
    if len(body) - head_len != 32:
        raise ValueError("account id must be 32 bytes")
    if _ss58_checksum(body) != data[-2:]:
        raise ValueError("bad checksum")
    return prefix, body[head_len:]
