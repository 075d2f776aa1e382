"""Strict Solidity ABI encoding and decoding of the types the gateway uses (eth-abi's rules).

Types: ``address``, ``bool``, ``uint<N>``, ``bytes<N>`` (1..32), ``bytes``, ``string`` and tuples
``(t1,t2,...)`` of those. Decoding is strict like eth-abi 5+: padding must be zero, integers must
fit their width, offsets and lengths must lie inside the data; violations raise ``AbiError``.
Addresses decode to lowercase ``0x`` strings, as eth-abi does.
"""
from __future__ import annotations

import re
from typing import Any, Sequence



class AbiError(ValueError):
    """Data that is not a valid ABI encoding of the requested types (or a value that does not fit)."""


_UINT = re.compile(r"^uint(\d+)$")
_FIXED_BYTES = re.compile(r"^bytes(\d+)$")


def _split_tuple(t: str) -> list[str]:
    inner, depth, part, out = t[1:-1], 0, "", []
    for ch in inner:
        if ch == "," and depth == 0:
            out.append(part)
            part = ""
            continue
        depth += (ch == "(") - (ch == ")")
        part += ch
    if part:
        out.append(part)
    return out


def _is_dynamic(t: str) -> bool:
    if t in ("bytes", "string"):
        return True
    if t.startswith("("):
        return any(_is_dynamic(c) for c in _split_tuple(t))
    return False


def _check_type(t: str) -> None:
    if t.startswith("(") and t.endswith(")"):
        for c in _split_tuple(t):
            _check_type(c)
        return
    if t in ("address", "bool", "bytes", "string"):
        return
    m = _UINT.match(t)
    if m and 8 <= int(m.group(1)) <= 256 and int(m.group(1)) % 8 == 0:
        return
    m = _FIXED_BYTES.match(t)
    if m and 1 <= int(m.group(1)) <= 32:
        return
    raise AbiError(f"unsupported ABI type {t!r}")


def _pad_right(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 32)


# --------------------------------------------------------------------------------- encoding
def _encode_static(t: str, v: Any) -> bytes:
    if t == "address":
        if isinstance(v, (bytes, bytearray)) and len(v) == 20:
            raw = bytes(v)
        elif isinstance(v, str) and len(v) == 42 and v[:2] in ("0x", "0X"):
            try:
                raw = bytes.fromhex(v[2:])
            except ValueError:
                raise AbiError(f"not an address: {v!r}") from None
        else:
            raise AbiError(f"not an address: {v!r}")
        return b"\x00" * 12 + raw
    if t == "bool":
        if not isinstance(v, bool):
            raise AbiError("bool expects True or False")
        return int(v).to_bytes(32, "big")
    m = _UINT.match(t)
    if m:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2 ** int(m.group(1)):
            raise AbiError(f"{t} out of range: {v!r}")
        return v.to_bytes(32, "big")
    m = _FIXED_BYTES.match(t)
    if m:
        n = int(m.group(1))
        if not isinstance(v, (bytes, bytearray)) or len(v) > n:
            raise AbiError(f"{t} expects at most {n} bytes")
        return bytes(v).ljust(32, b"\x00")
    raise AbiError(f"unsupported ABI type {t!r}")


def _encode_one(t: str, v: Any) -> bytes:
    if t.startswith("("):
        comps = _split_tuple(t)
        if not isinstance(v, (tuple, list)) or len(v) != len(comps):
            raise AbiError(f"{t} expects {len(comps)} values")
        return _encode_seq(comps, v)
    if t == "bytes":
        if not isinstance(v, (bytes, bytearray)):
            raise AbiError("bytes expects bytes")
        return len(v).to_bytes(32, "big") + _pad_right(bytes(v))
    if t == "string":
        if not isinstance(v, str):
            raise AbiError("string expects str")
        raw = v.encode()
        return len(raw).to_bytes(32, "big") + _pad_right(raw)
    return _encode_static(t, v)


def _encode_seq(types: Sequence[str], values: Sequence[Any]) -> bytes:
    heads: list[bytes | None] = []
    tails: list[bytes] = []
    for t, v in zip(types, values):
        if _is_dynamic(t):
            heads.append(None)
            tails.append(_encode_one(t, v))
        else:
            heads.append(_encode_one(t, v))
            tails.append(b"")
    head_size = sum(32 if h is None else len(h) for h in heads)
    out, tail_out, offset = b"", b"", head_size
    for h, tail in zip(heads, tails):
        if h is None:
            out += offset.to_bytes(32, "big")
            tail_out += tail
            offset += len(tail)
        else:
            out += h
    return out + tail_out


def encode(types: Sequence[str], values: Sequence[Any]) -> bytes:
    """``eth_abi.encode(types, values)`` for the supported types."""
    for t in types:
        _check_type(t)
    if len(types) != len(values):
        raise AbiError("as many values as types")
    return _encode_seq(list(types), list(values))


# --------------------------------------------------------------------------------- decoding
def _word(data: bytes, pos: int) -> bytes:
    if pos < 0 or pos + 32 > len(data):
        raise AbiError("data too short")
    return data[pos : pos + 32]


def _head_size(t: str) -> int:
    if t.startswith("(") and not _is_dynamic(t):
        return sum(_head_size(c) for c in _split_tuple(t))
    return 32


def _decode_static(t: str, w: bytes) -> Any:
    if t == "address":
        if any(w[:12]):
            raise AbiError("address with non-zero padding")
        return "0x" + w[12:].hex()
    if t == "bool":
        n = int.from_bytes(w, "big")
        if n > 1:
            raise AbiError("bool is 0 or 1")
        return bool(n)
    m = _UINT.match(t)
    if m:
        n = int.from_bytes(w, "big")
        if n >= 2 ** int(m.group(1)):
            raise AbiError(f"{t} with non-zero padding")
        return n
    m = _FIXED_BYTES.match(t)
    if m:
        size = int(m.group(1))
        if any(w[size:]):
            raise AbiError(f"{t} with non-zero padding")
        return w[:size]
    raise AbiError(f"unsupported ABI type {t!r}")


def _decode_bytes(data: bytes, pos: int) -> bytes:
    n = int.from_bytes(_word(data, pos), "big")
    start = pos + 32
    padded = n + (-n % 32)
    if n > len(data) or start + padded > len(data):
        raise AbiError("bytes longer than the data")
    if any(data[start + n : start + padded]):
        raise AbiError("bytes with non-zero padding")
    return data[start : start + n]


def _decode_seq(types: Sequence[str], data: bytes, base: int) -> tuple:
    out: list[Any] = []
    pos = base
    for t in types:
        if _is_dynamic(t):
            offset = int.from_bytes(_word(data, pos), "big")
            if offset > len(data):
                raise AbiError("offset outside the data")
            out.append(_decode_at(t, data, base + offset))
            pos += 32
        else:
            out.append(_decode_at(t, data, pos))
            pos += _head_size(t)
    return tuple(out)


def _decode_at(t: str, data: bytes, pos: int) -> Any:
    if t.startswith("("):
        return _decode_seq(_split_tuple(t), data, pos)
    if t == "bytes":
        return _decode_bytes(data, pos)
    if t == "string":
        try:
            return _decode_bytes(data, pos).decode()
        except UnicodeDecodeError:
            raise AbiError("string is not UTF-8") from None
    return _decode_static(t, _word(data, pos))


def decode(types: Sequence[str], data: bytes) -> tuple:
    """``eth_abi.decode(types, data)`` for the supported types (strict)."""
    for t in types:
        _check_type(t)
    return _decode_seq(list(types), bytes(data), 0)
