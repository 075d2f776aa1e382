"""keccak256, EIP-55 addresses and EIP-191 ``personal_sign`` recovery (coincurve = libsecp256k1).

Recovery follows eth-account's ``Account.recover_message`` exactly (the tests compare the two on
random keys, messages and malformed signatures): a 65-byte ``r || s || v`` signature; ``v`` is 0/1,
27/28 or EIP-155 style (``v >= 35``: ``(v - 35) % 2``); ``r`` and ``s`` must be below the curve
order (high ``s`` is accepted, as eth-keys does). Anything else raises ``ValueError``.
"""
from __future__ import annotations

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
EIP191_PREFIX = b"\x19Ethereum Signed Message:\n"


def keccak256(data: bytes) -> bytes:
    from Crypto.Hash import keccak  # pycryptodome

    return keccak.new(digest_bits=256, data=bytes(data)).digest()


def to_checksum_address(address: str | bytes) -> str:
    """EIP-55: ``0x`` + hex with each letter upper-cased where keccak(lowercase hex) has a nibble >= 8."""
    if isinstance(address, (bytes, bytearray)):
        if len(address) != 20:
            raise ValueError("an address is 20 bytes")
        hex_addr = bytes(address).hex()
    else:
        if not (isinstance(address, str) and len(address) == 42 and address[:2] in ("0x", "0X")):
            raise ValueError("an address is 0x + 40 hex digits")
        hex_addr = address[2:].lower()
        bytes.fromhex(hex_addr)  # ValueError when not hex
    digest = keccak256(hex_addr.encode()).hex()
    return "0x" + "".join(c.upper() if int(digest[i], 16) >= 8 else c for i, c in enumerate(hex_addr))


def address_of_public_key(public_key: bytes) -> str:
    """Checksummed address of a secp256k1 key: 33 bytes (compressed), 65 (``04 || x || y``) or 64 (``x || y``)."""
    if len(public_key) == 64:
        public_key = b"\x04" + bytes(public_key)
    if len(public_key) not in (33, 65):
        raise ValueError("secp256k1 key must be 33 (compressed) or 65 (uncompressed) bytes")
    from coincurve import PublicKey

    try:
        point = PublicKey(bytes(public_key)).format(compressed=False)
    except Exception as exc:  # coincurve raises ValueError / TypeError for points off the curve
        raise ValueError("not a secp256k1 public key") from exc
    return to_checksum_address(keccak256(point[1:])[-20:])


def eip191_hash(message: bytes) -> bytes:
    """keccak256(``"\\x19Ethereum Signed Message:\\n" + len(message) + message``) — ``personal_sign``."""
    return keccak256(EIP191_PREFIX + str(len(message)).encode() + message)


def standard_v(v: int) -> int:
    """eth-account's ``to_standard_v``: 0/1, 27/28 and EIP-155 (``v >= 35``) -> 0/1; ValueError otherwise."""
    if v >= 35:
        return (v - 35) % 2
    if v in (0, 1):
        return v
    if v in (27, 28):
        return v - 27
    raise ValueError(f"signature v={v} is not a recovery id")


def recover_hash(message_hash: bytes, signature: bytes) -> str:
    """The checksummed address whose key signed the 32-byte ``message_hash`` (``r || s || v``)."""
    if len(message_hash) != 32:
        raise ValueError("the message hash is 32 bytes")
    if len(signature) != 65:
        raise ValueError("a recoverable signature is 65 bytes (r || s || v)")
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big")
    if not (r < SECP256K1_N and s < SECP256K1_N):
        raise ValueError("signature r/s out of range")
    from coincurve import PublicKey

    compact = bytes(signature[:64]) + bytes([standard_v(signature[64])])
    try:
        key = PublicKey.from_signature_and_message(compact, bytes(message_hash), hasher=None)
    except Exception as exc:  # libsecp256k1 refuses r = 0, s = 0 and points that do not recover
        raise ValueError("signature does not recover a key") from exc
    return to_checksum_address(keccak256(key.format(compressed=False)[1:])[-20:])


def recover_eip191(message: bytes | str, signature: bytes) -> str:
    """``Account.recover_message(encode_defunct(...), signature=...)`` without eth-account."""
    data = message.encode() if isinstance(message, str) else bytes(message)
    return recover_hash(eip191_hash(data), signature)
