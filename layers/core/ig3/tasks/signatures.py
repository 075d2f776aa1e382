"""Verifies a device result's signature: EIP-191 over the canonical payload (``ig3.wire``).

The signer must be the address the result names, and — when the device's registry record
knows its key — the address its DID names. eth-account is imported on first use only.
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
            from eth_account import Account
            from eth_account.messages import encode_defunct

            recovered = Account.recover_message(encode_defunct(primitive=result.signing_payload()),
                                                signature=result.signature)
        except Exception:  # noqa: BLE001 — malformed signatures are simply invalid
            return False
        if recovered.lower() != result.signer.lower():
            return False
        if self._expected is not None:
            expected = self._expected(result.thing)
            if expected is not None and expected.lower() != recovered.lower():
                return False
        return True
