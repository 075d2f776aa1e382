"""The exact bytes a device signs to register — one function, used by the server and the client.

The message binds everything a replay could vary: the gateway's domain (a signature made for
another gateway is useless here), the DID, the chain the DID lives on, and the single-use nonce
with its expiry. Plain UTF-8 text, one field per line (like EIP-4361), so a human approving it
in a wallet sees what they sign; secp256k1 keys sign it with EIP-191 ``personal_sign``,
ed25519/sr25519 keys sign the bytes as they are.
"""

from __future__ import annotations

from datetime import datetime, timezone

REGISTRATION_STATEMENT = "iG3 device registration"
MESSAGE_VERSION = 1


def registration_message(*, domain: str, did: str, nonce: str, chain_id: int, expires_at: float) -> bytes:
    for name, value in (("domain", domain), ("did", did), ("nonce", nonce)):
        if not value or "\n" in value or "\r" in value:
            raise ValueError(f"{name} must be a non-empty single line")
    expiry = datetime.fromtimestamp(int(expires_at), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"{domain} wants you to register a device with your peaq DID:\n"
        f"{did}\n"
        f"\n"
        f"{REGISTRATION_STATEMENT}\n"
        f"\n"
        f"Version: {MESSAGE_VERSION}\n"
        f"Chain ID: {int(chain_id)}\n"
        f"Nonce: {nonce}\n"
        f"Expiration Time: {expiry}"
    ).encode()
