"""Fresh key pairs of the three peaq key types, their DIDs and documents, and real signatures."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import sr25519
from eth_account import Account
from eth_account.messages import encode_defunct
from nacl.signing import SigningKey

from ig3.did.ids import ss58_encode
from ig3.did.model import ED25519_2020, SECP256K1_RECOVERY_2020, SR25519_2020, DidDocument, VerificationMethod
from ig3.did.verify import MULTICODEC_ED25519, MULTICODEC_SECP256K1, MULTICODEC_SR25519, multibase_encode


@dataclass
class Identity:
    did: str
    document: DidDocument
    sign: Callable[[bytes], str]  # message -> hex signature
    private_key_hex: str | None = None


def _doc(did: str, vm_type: str, key_field: str, **extra) -> DidDocument:
    vm = VerificationMethod(id=f"{did}#keys-1", type=vm_type, controller=did, public_key_multibase=key_field)
    return DidDocument(id=did, controller=did, verification_methods=(vm,), authentications=(vm.id,), **extra)


def secp256k1_identity(*, form: str = "multibase", chain_id: int = 3338, **extra) -> Identity:
    acct = Account.create()
    did = f"did:peaq:{acct.address}"
    if form == "eip155":
        key_field = f"eip155:{chain_id}:{acct.address}"
    else:
        from eth_keys import keys

        key_field = multibase_encode(
            keys.PrivateKey(acct.key).public_key.to_compressed_bytes(), MULTICODEC_SECP256K1
        )

    def sign(message: bytes) -> str:
        return "0x" + acct.sign_message(encode_defunct(primitive=message)).signature.hex().removeprefix("0x")

    return Identity(did, _doc(did, SECP256K1_RECOVERY_2020, key_field, **extra), sign, "0x" + acct.key.hex())


def ed25519_identity(**extra) -> Identity:
    sk = SigningKey(os.urandom(32))
    pub = bytes(sk.verify_key)
    did = f"did:peaq:{ss58_encode(pub)}"
    return Identity(
        did,
        _doc(did, ED25519_2020, multibase_encode(pub, MULTICODEC_ED25519), **extra),
        lambda m: "0x" + sk.sign(m).signature.hex(),
    )


def sr25519_identity(**extra) -> Identity:
    pub, priv = sr25519.pair_from_seed(os.urandom(32))
    did = f"did:peaq:{ss58_encode(pub)}"
    return Identity(
        did,
        _doc(did, SR25519_2020, multibase_encode(pub, MULTICODEC_SR25519), **extra),
        lambda m: "0x" + sr25519.sign((pub, priv), m).hex(),
    )
