"""ig3.evm.abi against eth-abi (the reference): the same bytes out, the same values back, and the
same refusals for malformed data (strict decoding)."""
from __future__ import annotations

import eth_abi
import pytest
from eth_abi.exceptions import DecodingError
from hypothesis import given, settings
from hypothesis import strategies as st

from ig3.evm import abi

ADDRESS = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())  # eth-abi decodes lowercase
VALUES = {
    "address": ADDRESS,
    "bool": st.booleans(),
    "uint8": st.integers(0, 2**8 - 1),
    "uint32": st.integers(0, 2**32 - 1),
    "uint256": st.integers(0, 2**256 - 1),
    "bytes4": st.binary(min_size=4, max_size=4),
    "bytes32": st.binary(min_size=32, max_size=32),
    "bytes": st.binary(max_size=200),
    "string": st.text(max_size=80),
}
TYPES = list(VALUES)


def _schema(draw, depth=0):
    if depth < 2 and draw(st.booleans()):
        return "(" + ",".join(_schema(draw, depth + 1) for _ in range(draw(st.integers(1, 3)))) + ")"
    return draw(st.sampled_from(TYPES))


def _value(draw, t):
    if t.startswith("("):
        return tuple(_value(draw, c) for c in abi._split_tuple(t))
    return draw(VALUES[t])


@st.composite
def typed_values(draw):
    types = [_schema(draw) for _ in range(draw(st.integers(1, 4)))]
    return types, [_value(draw, t) for t in types]


@settings(max_examples=200, deadline=None)
@given(typed_values())
def test_encode_and_decode_match_eth_abi(case):
    types, values = case
    ours = abi.encode(types, values)
    assert ours == eth_abi.encode(types, values)
    assert abi.decode(types, ours) == eth_abi.decode(types, ours) == tuple(values)


@settings(max_examples=200, deadline=None)
@given(typed_values(), st.data())
def test_corrupted_data_is_refused_like_eth_abi(case, data):
    types, values = case
    raw = bytearray(eth_abi.encode(types, values))
    how = data.draw(st.sampled_from(["truncate", "flip", "extend"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))]
    elif how == "flip" and raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    else:
        raw += bytes(data.draw(st.integers(1, 64)))
    try:
        ref = eth_abi.decode(types, bytes(raw))
    except (DecodingError, ValueError, OverflowError):
        ref = "refused"
    try:
        ours = abi.decode(types, bytes(raw))
    except abi.AbiError:
        ours = "refused"
    assert ours == ref


def test_the_did_precompile_shapes():
    attr = (b"did:peaq:0xabc", b"0a0b" * 50, 2**32 - 1, 1_700_000_000_000)
    raw = eth_abi.encode(["(bytes,bytes,uint32,uint256)"], [attr])
    assert abi.decode(["(bytes,bytes,uint32,uint256)"], raw) == (attr,)
    reason = eth_abi.encode(["string"], ["Cannot find the item"])
    assert abi.decode(["string"], reason) == ("Cannot find the item",)


@pytest.mark.parametrize("types,values", [
    (["uint32"], [2**32]), (["uint8"], [-1]), (["bool"], [1]), (["bytes4"], [b"12345"]),
    (["address"], ["0x1234"]), (["bytes"], ["text"]), (["string"], [b"raw"]), (["int256"], [1]),
    (["(uint8,bytes)"], [(1,)]),
])
def test_values_that_do_not_fit_are_refused(types, values):
    with pytest.raises(abi.AbiError):
        abi.encode(types, values)
