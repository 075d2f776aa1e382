"""DID parsing and canonical forms, SS58 against a published vector, the EVM account mapping."""

import hashlib

import pytest

from ig3.did.ids import canonical_did, evm_account_id, parse_did, same_did, ss58_decode, ss58_encode
from ig3.errors import BadRequest

# Substrate's well-known dev account "Alice" (sr25519), generic prefix 42.
ALICE_PUB = bytes.fromhex("d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d")
ALICE_SS58 = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
# EIP-55's own test vector.
EIP55 = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


def test_ss58_matches_the_published_vector():
    assert ss58_encode(ALICE_PUB) == ALICE_SS58
    assert ss58_decode(ALICE_SS58) == (42, ALICE_PUB)


def test_ss58_two_byte_prefix_round_trips():
    for prefix in (0, 42, 63, 64, 1000, 16383):
        assert ss58_decode(ss58_encode(ALICE_PUB, prefix)) == (prefix, ALICE_PUB)


def test_evm_did_is_canonicalised_to_eip55():
    parsed = parse_did("did:peaq:" + EIP55.lower())
    assert parsed.did == "did:peaq:" + EIP55 and parsed.kind == "evm" and parsed.address == EIP55
    assert canonical_did("did:peaq:0x" + EIP55[2:].upper()) == "did:peaq:" + EIP55
    assert same_did("did:peaq:" + EIP55.lower(), "did:peaq:" + EIP55)


def test_evm_account_mapping_is_blake2_of_evm_prefix():
    expected = hashlib.blake2b(b"evm:" + bytes.fromhex(EIP55[2:]), digest_size=32).digest()
    assert evm_account_id(EIP55) == expected == parse_did("did:peaq:" + EIP55).account_id


def test_substrate_did_keeps_its_ss58_form_and_names_its_key():
    parsed = parse_did("did:peaq:" + ALICE_SS58)
    assert parsed.kind == "substrate" and parsed.account_id == ALICE_PUB and parsed.ss58_prefix == 42


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "did:peaq:",
        "did:ethr:" + EIP55,
        "did:peaq:0x123",
        "did:peaq:" + EIP55 + "00",
        "did:peaq:0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD",  # mixed case, wrong checksum
        "did:peaq:" + ALICE_SS58[:-1] + ("Z" if ALICE_SS58[-1] != "Z" else "Y"),  # SS58 checksum broken
        "did:peaq:0OIl" + "1" * 40,
        "did:peaq:" + "x" * 200,
    ],
)
def test_malformed_dids_are_bad_requests(bad):
    with pytest.raises(BadRequest) as err:
        parse_did(bad)
    assert err.value.code == "invalid_did" and err.value.status == 400
