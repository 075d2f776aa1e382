"""ig3.evm.keys against the reference implementations it replaces (eth-account, eth-keys, eth-utils).

Real keys, real signatures: every property compares our answer with eth-account's on the same input,
including malformed signatures (both must refuse, or both must recover the same address).
"""
from __future__ import annotations

import os

import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_defunct
from eth_keys import keys as eth_keys
from eth_utils import to_checksum_address as eth_checksum
from hypothesis import given, settings
from hypothesis import strategies as st

from ig3.evm import keys

PRIVATE = st.integers(min_value=1, max_value=keys.SECP256K1_N - 1).map(lambda n: n.to_bytes(32, "big"))


def _reference_recover(message: bytes, signature: bytes) -> str | None:
    try:
        return Account.recover_message(encode_defunct(primitive=message), signature=signature)
    except Exception:  # noqa: BLE001 — eth-keys raises several types
        return None


def _ours(message: bytes, signature: bytes) -> str | None:
    try:
        return keys.recover_eip191(message, signature)
    except ValueError:
        return None


@settings(max_examples=60, deadline=None)
@given(PRIVATE, st.binary(max_size=300))
def test_recovers_what_eth_account_signed(private, message):
    acct = Account.from_key(private)
    sig = bytes(acct.sign_message(encode_defunct(primitive=message)).signature)
    assert keys.recover_eip191(message, sig) == acct.address
    # text form (SIWE) and bytes form hash alike
    assert keys.eip191_hash(message) == _hash_eip191_message(encode_defunct(primitive=message))


@settings(max_examples=40, deadline=None)
@given(PRIVATE, st.text(max_size=200))
def test_text_messages(private, text):
    acct = Account.from_key(private)
    sig = bytes(acct.sign_message(encode_defunct(text=text)).signature)
    assert keys.recover_eip191(text, sig) == acct.address == _reference_recover(text.encode(), sig)


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32),
       st.sampled_from([0, 1, 2, 26, 27, 28, 29, 34, 35, 36, 37, 38, 255]), st.binary(max_size=64))
def test_arbitrary_signatures_agree_with_eth_account(r, s, v, message):
    sig = r + s + bytes([v])
    assert _ours(message, sig) == _reference_recover(message, sig)


@pytest.mark.parametrize("mutate", ["r_is_n", "s_is_n", "r_zero", "s_zero", "high_s", "eip155_v", "short", "long"])
def test_edge_signatures_agree_with_eth_account(mutate):
    acct = Account.from_key(b"\x07" * 32)
    msg = b"ig3 edge cases"
    sig = bytearray(acct.sign_message(encode_defunct(primitive=msg)).signature)
    n = keys.SECP256K1_N.to_bytes(32, "big")
    if mutate == "r_is_n":
        sig[:32] = n
    elif mutate == "s_is_n":
        sig[32:64] = n
    elif mutate == "r_zero":
        sig[:32] = b"\x00" * 32
    elif mutate == "s_zero":
        sig[32:64] = b"\x00" * 32
    elif mutate == "high_s":  # the malleable twin: (r, n - s, v ^ 1) recovers the same key
        s_val = int.from_bytes(sig[32:64], "big")
        sig[32:64] = (keys.SECP256K1_N - s_val).to_bytes(32, "big")
        sig[64] = 27 + ((sig[64] - 27) ^ 1)
    elif mutate == "eip155_v":
        sig[64] = 35 + 2 * 1 + (sig[64] - 27)  # chain 1: v is one byte here
    elif mutate == "short":
        del sig[-1]
    elif mutate == "long":
        sig.append(0)
    ref = _reference_recover(msg, bytes(sig)) if len(sig) == 65 else None
    assert _ours(msg, bytes(sig)) == ref
    if mutate in ("high_s", "eip155_v"):
        assert ref == acct.address  # accepted by both


@settings(max_examples=40, deadline=None)
@given(PRIVATE)
def test_public_key_to_address(private):
    pk = eth_keys.PrivateKey(private).public_key
    assert keys.address_of_public_key(pk.to_compressed_bytes()) == pk.to_checksum_address()
    assert keys.address_of_public_key(b"\x04" + pk.to_bytes()) == pk.to_checksum_address()
    assert keys.address_of_public_key(pk.to_bytes()) == pk.to_checksum_address()


def test_bad_public_keys():
    for bad in (b"\x02" + b"\xff" * 32, b"\x05" + b"\x01" * 64, b"\x01" * 10):
        with pytest.raises(ValueError):
            keys.address_of_public_key(bad)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=20, max_size=20))
def test_checksums_match_eth_utils(raw):
    lower = "0x" + raw.hex()
    assert keys.to_checksum_address(lower) == eth_checksum(lower) == keys.to_checksum_address(raw)
    assert keys.to_checksum_address(lower.upper().replace("0X", "0x")) == eth_checksum(lower)


def test_keccak_vectors():
    assert keys.keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert keys.keccak256(b"Transfer(address,address,uint256)").hex().startswith("ddf252ad")
    data = os.urandom(100)
    from eth_hash.auto import keccak

    assert keys.keccak256(data) == keccak(data)
