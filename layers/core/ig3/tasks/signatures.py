"""Verifies a device result's signature: EIP-191 over the canonical payload (``ig3.wire``).

The signer must be the address the result names, and — when the device's registry record
knows its key — the address its DID names. Recovery is ``ig3.evm.keys`` (libsecp256k1 through
coincurve, eth-account's acceptance rules), imported on first use: the results function ships
coincurve + pycryptodome (~10 MB) instead of eth-account's ~40 MB (issue #9).
"""
from __future__ import annotations

from collections.abc import Callable

from ig3.wire import DeviceResult


class DeviceSignatureVerifier:
    def __init__(self, expected_address: Callable[[str], str | None] | None = None):
        # expected_address(thing) -> the device key's address from the registry, or None if unknown
        self._expected = expected_address

    def verify(self, result: DeviceResult) -> bool:
        if not result.signature or not result.signer:
            return False
        try:
            from ig3.evm.keys import recover_eip191

            recovered = recover_eip191(result.signing_payload(), _signature_bytes(result.signature))
        except Exception:  # noqa: BLE001 — malformed signatures are simply invalid
            return False
        if recovered.lower() != result.signer.lower():
            return False
        if self._expected is not None:
            expected = self._expected(result.thing)
            if expected is not None and expected.lower() != recovered.lower():
                return False
        return True


def _signature_bytes(signature: str | bytes) -> bytes:
    """Hex (``0x`` optional) or raw bytes, as eth-account accepted them."""
    if isinstance(signature, (bytes, bytearray)):
        return bytes(signature)
    text = signature[2:] if signature.startswith(("0x", "0X")) else signature
    return bytes.fromhex(text)
