"""Device-side registration over HTTP: challenge -> sign -> register (stdlib urllib only).

Used by the local cloud's simulated fleet and usable by any device holding a secp256k1 key
(``did:peaq:0x…``). The message comes from ``ig3.did.messages.registration_message`` — the same
function the server verifies with. The client builds the domain from the URL it is talking to
and refuses a challenge naming another domain: a signature is only ever made for this gateway.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from ig3.did.messages import registration_message


class RegistrationError(RuntimeError):
    def __init__(self, status: int, body: Any):
        err = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"registration failed ({status} {err.get('code', '')}): {err.get('message', body)}")
        self.status, self.body = status, body
        self.code = err.get("code")


def _post(url: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 — caller-chosen gateway URL
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")[:500]
        raise RegistrationError(exc.code, body) from None


def sign_registration(private_key_hex: str, challenge: dict[str, Any]) -> str:
    """EIP-191 signature (0x hex, 65 bytes) over the registration message for ``challenge``."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    message = registration_message(
        domain=challenge["domain"],
        did=challenge["did"],
        nonce=challenge["nonce"],
        chain_id=int(challenge["chain_id"]),
        expires_at=float(challenge["expires_at"]),
    )
    signed = Account.sign_message(encode_defunct(primitive=message), private_key=private_key_hex)
    return "0x" + signed.signature.hex().removeprefix("0x")


def did_for_key(private_key_hex: str) -> str:
    from eth_account import Account

    return "did:peaq:" + Account.from_key(private_key_hex).address


def register_device(
    base_url: str,
    private_key_hex: str,
    *,
    capabilities: dict[str, Any],
    models: list[dict[str, Any]],
    location: dict[str, float] | None,
    owner: str,
    region: str | None = None,
    did: str | None = None,
    chain_id: int | None = None,
    timeout: float = 15.0,
    verify_domain: bool = True,
) -> dict[str, Any]:
    """Register (or re-register, rotating credentials) the device whose key is ``private_key_hex``.

    Returns the gateway's answer: ``device_id``, ``thing_name``, ``credentials`` (certificate PEM
    and private key — store them, they are not shown again), ``topics``, ``iot_endpoint``, ...
    Raises ``RegistrationError`` with the gateway's error code on a 4xx/5xx.
    """
    base = base_url.rstrip("/")
    did = did or did_for_key(private_key_hex)
    body: dict[str, Any] = {"did": did}
    if chain_id is not None:
        body["chain_id"] = chain_id
    challenge = _post(f"{base}/v1/devices/challenge", body, timeout)
    if verify_domain and challenge.get("domain") != urlsplit(base).netloc:
        raise RegistrationError(
            0,
            {
                "error": {
                    "code": "domain_mismatch",
                    "message": f"challenge names {challenge.get('domain')!r}, "
                    f"not {urlsplit(base).netloc!r}",
                }
            },
        )
    payload: dict[str, Any] = {
        "did": challenge["did"],
        "nonce": challenge["nonce"],
        "signature": sign_registration(private_key_hex, challenge),
        "capabilities": capabilities,
        "models": models,
        "owner": owner,
    }
    if location is not None:
        payload["location"] = location
    if region is not None:
        payload["region"] = region
    if chain_id is not None:
        payload["chain_id"] = chain_id
    return _post(f"{base}/v1/devices/register", payload, timeout)
