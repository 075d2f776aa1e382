"""Signature verification with real keys of all three types, and every way it must refuse."""

import time

import pytest

from did._keys import ed25519_identity, secp256k1_identity, sr25519_identity
from ig3.did.messages import registration_message
from ig3.did.model import VerificationMethod
from ig3.did.verify import DidDocumentExpired, verify_did_signature
from ig3.errors import Unauthorized

MSG = registration_message(
    domain="gw.example", did="did:peaq:x", nonce="ab" * 16, chain_id=3338, expires_at=time.time() + 60
)


@pytest.mark.parametrize(
    "make",
    [secp256k1_identity, lambda: secp256k1_identity(form="eip155"), ed25519_identity, sr25519_identity],
    ids=["secp256k1", "secp256k1-eip155", "ed25519", "sr25519"],
)
def test_each_key_type_verifies_and_rejects_a_foreign_key(make):
    ident, other = make(), make()
    assert verify_did_signature(ident.document, MSG, ident.sign(MSG), chain_id=3338) == ident.did + "#keys-1"
    with pytest.raises(Unauthorized) as err:
        verify_did_signature(ident.document, MSG, other.sign(MSG), chain_id=3338)
    assert err.value.code == "signature_mismatch"
    with pytest.raises(Unauthorized):
        verify_did_signature(ident.document, MSG + b"!", ident.sign(MSG))


@pytest.mark.parametrize("make", [ed25519_identity, sr25519_identity])
def test_polkadot_js_wrapped_signatures_are_accepted(make):
    ident = make()
    assert verify_did_signature(ident.document, MSG, ident.sign(b"<Bytes>" + MSG + b"</Bytes>"))


def test_eip155_key_on_another_chain_is_refused():
    ident = secp256k1_identity(form="eip155", chain_id=2241)
    with pytest.raises(Unauthorized) as err:
        verify_did_signature(ident.document, MSG, ident.sign(MSG), chain_id=3338)
    assert err.value.code == "chain_id_mismatch"


def test_only_authentication_methods_count():
    ident = secp256k1_identity()
    doc = ident.document.model_copy(update={"authentications": ()})
    with pytest.raises(Unauthorized) as err:
        verify_did_signature(doc, MSG, ident.sign(MSG))
    assert err.value.code == "no_authentication_method"


def test_relative_authentication_refs_resolve_against_the_document():
    ident = ed25519_identity()
    vm = ident.document.verification_methods[0].model_copy(update={"id": "#keys-1"})
    doc = ident.document.model_copy(update={"verification_methods": (vm,), "authentications": ("#keys-1",)})
    assert verify_did_signature(doc, MSG, ident.sign(MSG)) == ident.did + "#keys-1"


def test_a_method_controlled_by_a_stranger_cannot_authenticate():
    ident, stranger = secp256k1_identity(), secp256k1_identity()
    vm = ident.document.verification_methods[0].model_copy(update={"controller": stranger.did})
    doc = ident.document.model_copy(update={"verification_methods": (vm,)})
    with pytest.raises(Unauthorized):
        verify_did_signature(doc, MSG, ident.sign(MSG))


def test_the_document_controller_may_hold_the_key():
    owner, device = secp256k1_identity(), secp256k1_identity()
    vm = VerificationMethod(
        id=device.did + "#owner",
        type=owner.document.verification_methods[0].type,
        controller=owner.did,
        public_key_multibase=owner.document.verification_methods[0].public_key_multibase,
    )
    doc = device.document.model_copy(
        update={"controller": owner.did, "verification_methods": (vm,), "authentications": (vm.id,)}
    )
    assert verify_did_signature(doc, MSG, owner.sign(MSG)) == device.did + "#owner"


def test_expired_document_is_refused():
    ident = sr25519_identity(expires_at=time.time() - 1)
    with pytest.raises(DidDocumentExpired) as err:
        verify_did_signature(ident.document, MSG, ident.sign(MSG))
    assert err.value.status == 401 and err.value.code == "did_document_expired"


@pytest.mark.parametrize(
    "sig", ["", "0x", "zz", "0x" + "ab" * 10, "0x" + "ab" * 66, "0x" + "a" * 129, "0x" + "00" * 65]
)
def test_malformed_signatures_are_refused(sig):
    ident = secp256k1_identity()
    with pytest.raises(Unauthorized):
        verify_did_signature(ident.document, MSG, sig)


def test_a_malformed_key_in_the_document_authenticates_nobody():
    ident = ed25519_identity()
    vm = ident.document.verification_methods[0].model_copy(update={"public_key_multibase": "z1111"})
    with pytest.raises(Unauthorized):
        verify_did_signature(
            ident.document.model_copy(update={"verification_methods": (vm,)}), MSG, ident.sign(MSG)
        )
