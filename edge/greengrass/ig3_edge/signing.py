"""Result signatures with the device key (the secp256k1 key its did:peaq names).

Each result is signed with EIP-191 (``personal_sign``) over ``DeviceResult.signing_payload()``,
the canonical encoding of (task id, attempt, thing, status, output sha256, token counts, model
hash) defined in ``ig3.wire``; the cloud recovers the address and compares it with the DID's.
The key file holds one hex private key (``0x...``); it is read once and never logged.
"""
from __future__ import annotations

from pathlib import Path

from ig3.wire import DeviceResult


class ResultSigner:
    def __init__(self, private_key: str):
        from eth_account import Account

        self._account = Account.from_key(private_key)
        self.address: str = self._account.address

    @classmethod
    def from_file(cls, path: Path) -> "ResultSigner":
        key = path.read_text().strip()
        if not key:
            raise ValueError(f"key file {path} is empty")
        return cls(key if key.startswith("0x") else "0x" + key)

    def sign(self, result: DeviceResult) -> DeviceResult:
        from eth_account.messages import encode_defunct

        unsigned = result.model_copy(update={"signer": self.address, "signature": None})
        signed = self._account.sign_message(encode_defunct(primitive=unsigned.signing_payload()))
        return unsigned.model_copy(update={"signature": "0x" + signed.signature.hex().removeprefix("0x")})


def recover_signer(result: DeviceResult) -> str:
    """The address that signed ``result`` (what the cloud checks against the device's DID)."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    if not result.signature:
        raise ValueError("result is not signed")
    return Account.recover_message(encode_defunct(primitive=result.signing_payload()), signature=result.signature)
