"""Identities for the local cloud's simulated fleet, published to the local DID registry.

Each simulated M1 gets its own secp256k1 key and ``did:peaq:0x…`` DID, with a document shaped
as peaq's SDKs write it on EVM chains: one ``EcdsaSecp256k1RecoveryMethod2020`` method
``<did>#keys-1`` listed in ``authentications``, controlled by the DID itself. Its key field is
the z-multibase compressed public key (what the SDK writes when it holds the signer), so the
document carries the key rather than only the address.

``publish_local_document`` stores the document the way the chain does (the same hex protobuf
attribute value), so ``LocalRegistryResolver`` and ``PeaqEvmResolver`` share one decoder.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from ig3.did.codec import encode_attribute_value
from ig3.did.ids import DID_PREFIX, to_checksum_address
from ig3.did.model import SECP256K1_RECOVERY_2020, DidDocument, VerificationMethod
from ig3.did.verify import MULTICODEC_SECP256K1, multibase_encode

_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def private_key_from_seed(seed: bytes | str | None) -> bytes:
    """A valid secp256k1 private key: random for None, else sha256(seed) (re-hashed if out of range)."""
    if seed is None:
        material = os.urandom(32)
    else:
        material = hashlib.sha256(seed.encode() if isinstance(seed, str) else seed).digest()
    while not 0 < int.from_bytes(material, "big") < _SECP256K1_N:
        material = hashlib.sha256(material).digest()
    return material


def evm_document(
    address: str, compressed_public_key: bytes, *, expires_at: float | None = None
) -> DidDocument:
    did = DID_PREFIX + to_checksum_address(address)
    vm = VerificationMethod(
        id=f"{did}#keys-1",
        type=SECP256K1_RECOVERY_2020,
        controller=did,
        public_key_multibase=multibase_encode(compressed_public_key, MULTICODEC_SECP256K1),
    )
    return DidDocument(
        id=did,
        controller=did,
        verification_methods=(vm,),
        authentications=(vm.id,),
        created_ms=int(time.time() * 1000),
        expires_at=expires_at,
    )


def make_device_identity(
    seed: bytes | str | None = None, *, expires_at: float | None = None
) -> tuple[str, str, DidDocument]:
    """-> (private key hex, did, document). Deterministic for a given seed."""
    from coincurve import PrivateKey

    from ig3.evm.keys import address_of_public_key

    secret = private_key_from_seed(seed)
    public = PrivateKey(secret).public_key.format(compressed=True)
    doc = evm_document(address_of_public_key(public), public, expires_at=expires_at)
    return "0x" + secret.hex(), doc.id, doc


def publish_local_document(table: str, doc: DidDocument, *, client: Any | None = None) -> None:
    """Write (or replace) ``doc`` in the local registry table ``table`` (its physical name)."""
    if client is None:
        from ig3.aws import client as aws_client

        client = aws_client("dynamodb")
    item: dict[str, Any] = {
        "did": {"S": doc.id},
        "value": {"S": encode_attribute_value(doc).decode()},
        "created_ms": {"N": str(doc.created_ms if doc.created_ms is not None else int(time.time() * 1000))},
    }
    if doc.expires_at is not None:
        item["expires_at"] = {"N": repr(float(doc.expires_at))}
    if doc.validity_block is not None:
        item["validity_block"] = {"N": str(doc.validity_block)}
    client.put_item(TableName=table, Item=item)
