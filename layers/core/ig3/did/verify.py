"""Signature verification against a resolved DID document.

``verify_did_signature(document, message, signature)`` is the one entry point: device
registration and DID login (``ig3.identity``) both call it, so the rules live once:

1. The document must not be expired.
2. Only verification methods referenced from ``authentications`` may authenticate (DID Core's
   authentication relationship; peaq's SDKs add every method they create to it), and only those
   whose ``controller`` is the DID itself or the document's controller.
3. By key type:
   - ``EcdsaSecp256k1RecoveryMethod2020``: a 65-byte EIP-191 (``personal_sign``) signature; the
     recovered address must be the method's account — ``eip155:<chain>:<address>`` (what peaq's
     SDKs write on EVM chains; the chain must be ours) or a ``z`` multibase secp256k1 public key
     (multicodec 0xe7).
   - ``Ed25519VerificationKey2020`` (multicodec 0xed, PyNaCl) and ``Sr25519VerificationKey2020``
     (multicodec 0xef, py-sr25519-bindings, the ``substrate`` signing context): a 64-byte
     signature over the message, or over ``<Bytes>message</Bytes>`` — the wrapping polkadot.js
     ``signRaw`` applies, so browser-extension wallets work unchanged.

Signatures are hex (``0x`` optional). Every failure raises ``ig3.errors.Unauthorized`` with a
specific ``code``; the caller learns which method matched from the return value.
Pure logic; libsecp256k1 (``ig3.evm.keys``, coincurve) is imported only when a secp256k1 method is tried.
"""

from __future__ import annotations

import re

import base58

from ig3.did.ids import same_did
from ig3.did.model import ED25519_2020, SECP256K1_RECOVERY_2020, SR25519_2020, DidDocument, VerificationMethod
from ig3.errors import Unauthorized

_HEX_RE = re.compile(r"^(0x)?[0-9a-fA-F]+$")
_EIP155_RE = re.compile(r"^eip155:(\d{1,12}):(0x[0-9a-fA-F]{40})$")
MULTICODEC_SECP256K1 = b"\xe7\x01"
MULTICODEC_ED25519 = b"\xed\x01"
MULTICODEC_SR25519 = b"\xef\x01"
POLKADOT_WRAP = (b"<Bytes>", b"</Bytes>")


class DidDocumentExpired(Unauthorized):
    code = "did_document_expired"


def parse_signature(signature: str) -> bytes:
    """Hex signature -> bytes (64: ed25519/sr25519, 65: secp256k1 r||s||v). Raises ValueError."""
    if not isinstance(signature, str) or len(signature) > 200 or not _HEX_RE.match(signature):
        raise ValueError("signature must be hex")
    raw = signature[2:] if signature.startswith("0x") else signature
    if len(raw) % 2:
        raise ValueError("signature hex has an odd length")
    sig = bytes.fromhex(raw)
    if len(sig) not in (64, 65):
        raise ValueError("signature must be 64 (ed25519/sr25519) or 65 (secp256k1) bytes")
    return sig


def multibase_key(value: str, codec: bytes) -> bytes:
    """``z``+base58btc(multicodec || key) -> key bytes. Raises ValueError."""
    if not value.startswith("z"):
        raise ValueError("public key is not z-multibase")
    raw = base58.b58decode(value[1:])
    if not raw.startswith(codec):
        raise ValueError("public key has another multicodec")
    return raw[len(codec) :]


def multibase_encode(key: bytes, codec: bytes) -> str:
    return "z" + base58.b58encode(codec + key).decode()


def authentication_methods(document: DidDocument) -> list[VerificationMethod]:
    """Methods the document allows to authenticate (rule 2 above), in document order."""
    allowed = {document.absolute(ref) for ref in document.authentications}
    out = []
    for vm in document.verification_methods:
        if document.absolute(vm.id) not in allowed:
            continue
        controller = vm.controller or document.controller or document.id
        if same_did(controller, document.id) or (
            document.controller and same_did(controller, document.controller)
        ):
            out.append(vm)
    return out


def verify_did_signature(
    document: DidDocument,
    message: bytes,
    signature: str,
    *,
    chain_id: int | None = None,
    now: float | None = None,
) -> str:
    """The absolute id of the verification method that signed ``message``; Unauthorized otherwise."""
    if document.is_expired(now):
        raise DidDocumentExpired("the DID document has expired")
    try:
        sig = parse_signature(signature)
    except ValueError as exc:
        raise Unauthorized(f"malformed signature: {exc}", code="invalid_signature") from None
    methods = authentication_methods(document)
    if not methods:
        raise Unauthorized("the DID document has no authentication method", code="no_authentication_method")
    recovered: list[str | None] = []  # memo: secp256k1 recovery is the expensive step
    other_chain = False
    for vm in methods:
        try:
            if vm.type == SECP256K1_RECOVERY_2020 and len(sig) == 65:
                expected, vm_chain = _secp256k1_account(vm.public_key_multibase)
                if chain_id is not None and vm_chain is not None and vm_chain != chain_id:
                    other_chain = True
                    continue
                if not recovered:
                    recovered.append(_recover_eip191(message, sig))
                if recovered[0] is not None and recovered[0].lower() == expected.lower():
                    return document.absolute(vm.id)
            elif vm.type == ED25519_2020 and len(sig) == 64:
                if _ed25519_ok(multibase_key(vm.public_key_multibase, MULTICODEC_ED25519), message, sig):
                    return document.absolute(vm.id)
            elif vm.type == SR25519_2020 and len(sig) == 64:
                if _sr25519_ok(multibase_key(vm.public_key_multibase, MULTICODEC_SR25519), message, sig):
                    return document.absolute(vm.id)
        except ValueError:
            continue  # a malformed key in the document authenticates nobody
    if other_chain:
        raise Unauthorized(
            f"the DID's key is bound to another chain than {chain_id}", code="chain_id_mismatch"
        )
    raise Unauthorized(
        "the signature matches no authentication method of the DID document", code="signature_mismatch"
    )


def _secp256k1_account(public_key_multibase: str) -> tuple[str, int | None]:
    """-> (EVM address, chain id or None) named by a secp256k1 method's key field."""
    m = _EIP155_RE.match(public_key_multibase)
    if m:
        return m.group(2), int(m.group(1))
    key = multibase_key(public_key_multibase, MULTICODEC_SECP256K1)
    from ig3.evm.keys import address_of_public_key

    if len(key) == 33 or (len(key) == 65 and key[0] == 4):
        return address_of_public_key(key), None
    raise ValueError("secp256k1 key must be 33 (compressed) or 65 (uncompressed) bytes")


def _recover_eip191(message: bytes, sig: bytes) -> str | None:
    from ig3.evm.keys import recover_eip191

    try:
        return recover_eip191(message, sig)
    except ValueError:  # r/s/v that recover no key
        return None


def _ed25519_ok(public_key: bytes, message: bytes, sig: bytes) -> bool:
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    if len(public_key) != 32:
        raise ValueError("ed25519 key must be 32 bytes")
    key = VerifyKey(public_key)
    for candidate in (message, POLKADOT_WRAP[0] + message + POLKADOT_WRAP[1]):
        try:
            key.verify(candidate, sig)
            return True
        except BadSignatureError:
            continue
    return False


def _sr25519_ok(public_key: bytes, message: bytes, sig: bytes) -> bool:
    import sr25519

    if len(public_key) != 32:
        raise ValueError("sr25519 key must be 32 bytes")
    for candidate in (message, POLKADOT_WRAP[0] + message + POLKADOT_WRAP[1]):
        try:
            if sr25519.verify(sig, candidate, public_key):
                return True
        except ValueError:
            return False
    return False
