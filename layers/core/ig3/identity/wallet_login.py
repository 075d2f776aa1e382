"""Sign-In with Ethereum: every check EIP-4361 asks of a relying party, in a fixed order.

Order, and why: the cheap, stateless checks (syntax, domain, URI, chain, times) run first; the
signature next; the nonce is consumed LAST, atomically, and only for a message whose signature
is valid — so nobody can burn another user's nonce with a forged message, and of two
concurrent logins with the same signed message exactly one succeeds.

Signatures: EIP-191 ``personal_sign`` recovered with ``ig3.evm.keys`` (libsecp256k1 through
coincurve, eth-account's acceptance rules; imported on the login path only). Contract wallets
(EIP-1271) are checked with ``isValidSignature(bytes32,bytes)`` over JSON-RPC ``eth_call``
(``ig3.evm.rpc``, stdlib HTTP) when an RPC URL is configured for the message's chain. No web3 /
eth-account: they weighed ~55 MB in the api function's package for these two calls (issue #9).

Every failure is an ``Unauthorized`` with its own ``code``; messages say what was wrong,
never echo the signature.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Protocol

from ig3.errors import Unauthorized
from ig3.identity import siwe
from ig3.identity.nonces import NonceStore

SIWE_PURPOSE = "siwe"
EIP1271_MAGIC = bytes.fromhex("1626ba7e")
MAX_MESSAGE_BYTES = 8 * 1024


@dataclass(frozen=True)
class SiweRules:
    domain: str  # the gateway's public authority, e.g. "api.example.com" or "127.0.0.1:8080"
    allowed_chain_ids: frozenset[int]
    clock_skew_s: int = 60
    max_age_s: int = 600  # an issued-at older than this is stale even with a live nonce
    require_https: bool = False  # on for a public gateway; the local cloud serves plain http


@dataclass(frozen=True)
class WalletIdentity:
    address: str  # EIP-55 checksummed
    chain_id: int
    via: str  # "eoa" (EIP-191) or "eip1271"


class ContractSignatureChecker(Protocol):
    def is_valid(self, chain_id: int, address: str, message_hash: bytes, signature: bytes) -> bool: ...


def eip191_hash(text: str) -> bytes:
    """keccak256("\\x19Ethereum Signed Message:\\n" + len(message) + message)."""
    from ig3.evm.keys import eip191_hash as hash_bytes

    return hash_bytes(text.encode())


def recover_eip191(text: str, signature: bytes) -> str:
    """The checksummed address whose key produced this personal_sign signature (ValueError if none)."""
    from ig3.evm.keys import recover_eip191 as recover

    return recover(text, signature)


def decode_signature(signature: str) -> bytes:
    sig = signature[2:] if signature.startswith(("0x", "0X")) else signature
    if not sig or len(sig) % 2 or len(sig) > 4096:
        raise Unauthorized("signature must be a 0x-prefixed hex string", code="invalid_signature")
    try:
        return bytes.fromhex(sig)
    except ValueError:
        raise Unauthorized("signature must be a 0x-prefixed hex string", code="invalid_signature") from None


class SiweVerifier:
    def __init__(self, rules: SiweRules, nonces: NonceStore, *,
                 contract_checker: ContractSignatureChecker | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.rules = rules
        self._nonces = nonces
        self._contracts = contract_checker
        self._clock = clock

    def verify(self, message: str, signature: str) -> WalletIdentity:
        if not isinstance(message, str) or len(message.encode()) > MAX_MESSAGE_BYTES:
            raise Unauthorized("SIWE message missing or too large", code="invalid_siwe_message")
        try:
            msg = siwe.parse(message)
        except siwe.SiweSyntaxError as exc:
            raise Unauthorized(f"malformed SIWE message: {exc}", code="invalid_siwe_message") from None
        self._check_binding(msg)
        self._check_times(msg)
        sig = decode_signature(signature)
        via = self._check_signature(message, msg, sig)
        if self._nonces.consume(SIWE_PURPOSE, msg.nonce) is None:
            raise Unauthorized("nonce unknown, expired or already used: request a new one from /v1/auth/nonce",
                               code="invalid_nonce")
        return WalletIdentity(address=msg.address, chain_id=msg.chain_id, via=via)

    def _check_binding(self, msg: siwe.SiweMessage) -> None:
        if msg.domain != self.rules.domain:
            raise Unauthorized(f"SIWE domain '{msg.domain}' is not this gateway ('{self.rules.domain}')",
                               code="siwe_domain_mismatch")
        schemes = ("https",) if self.rules.require_https else ("https", "http")
        m = siwe._URI_RE.fullmatch(msg.uri)  # noqa: SLF001 - same grammar, we need its authority group
        scheme = msg.uri.split(":", 1)[0].lower()
        if not m or m.group("authority") != self.rules.domain or scheme not in schemes:
            raise Unauthorized(f"SIWE URI must be an {'/'.join(schemes)} URI on '{self.rules.domain}'",
                               code="siwe_uri_mismatch")
        if msg.scheme is not None and msg.scheme.lower() not in schemes:
            raise Unauthorized(f"SIWE scheme must be {' or '.join(schemes)}", code="siwe_scheme_mismatch")
        if msg.chain_id not in self.rules.allowed_chain_ids:
            allowed = ", ".join(str(c) for c in sorted(self.rules.allowed_chain_ids))
            raise Unauthorized(f"chain id {msg.chain_id} is not accepted (allowed: {allowed})",
                               code="siwe_chain_not_allowed")

    def _check_times(self, msg: siwe.SiweMessage) -> None:
        now = self._clock()
        skew = timedelta(seconds=self.rules.clock_skew_s)
        issued = msg.issued_at_dt
        if issued > now + skew:
            raise Unauthorized("SIWE message is issued in the future", code="siwe_not_yet_valid")
        if issued < now - timedelta(seconds=self.rules.max_age_s):
            raise Unauthorized("SIWE message is too old: sign a fresh one", code="siwe_expired")
        exp = msg.expiration_time_dt
        if exp is not None and exp <= now - skew:
            raise Unauthorized("SIWE message has expired", code="siwe_expired")
        nbf = msg.not_before_dt
        if nbf is not None and nbf > now + skew:
            raise Unauthorized("SIWE message is not valid yet (Not Before)", code="siwe_not_yet_valid")

    def _check_signature(self, text: str, msg: siwe.SiweMessage, sig: bytes) -> str:
        recovered = None
        if len(sig) == 65:
            try:
                recovered = recover_eip191(text, sig)
            except Exception:  # noqa: BLE001 - eth-keys raises several types for bad r/s/v
                recovered = None
            if recovered == msg.address:
                return "eoa"
        if self._contracts is not None:
            try:
                ok = self._contracts.is_valid(msg.chain_id, msg.address, eip191_hash(text), sig)
            except Unauthorized:
                raise
            except Exception:  # noqa: BLE001 - an unreachable RPC is a failed login, not a 500
                raise Unauthorized("could not verify a contract-wallet signature (RPC unavailable)",
                                   code="invalid_signature") from None
            if ok:
                return "eip1271"
        if recovered is None:
            raise Unauthorized("signature is not a valid 65-byte EIP-191 signature", code="invalid_signature")
        raise Unauthorized("signature was made by another address than the message's", code="invalid_signature")


class RpcEip1271Checker:
    """EIP-1271 ``isValidSignature(bytes32,bytes)`` over JSON-RPC ``eth_call``, one client per chain."""

    SELECTOR = bytes.fromhex("1626ba7e")

    def __init__(self, rpc_urls: dict[int, str], timeout_s: float = 5.0):
        self._urls = dict(rpc_urls)
        self._timeout = timeout_s
        self._clients: dict[int, Any] = {}

    def _client(self, chain_id: int) -> Any | None:
        if chain_id not in self._urls:
            return None
        client = self._clients.get(chain_id)
        if client is None:
            from ig3.evm.rpc import JsonRpcClient

            client = self._clients[chain_id] = JsonRpcClient(self._urls[chain_id], timeout_s=self._timeout)
        return client

    def is_valid(self, chain_id: int, address: str, message_hash: bytes, signature: bytes) -> bool:
        client = self._client(chain_id)
        if client is None:
            return False
        from ig3.evm.abi import encode

        data = self.SELECTOR + encode(["bytes32", "bytes"], [message_hash, signature])
        # Transport errors propagate (the verifier turns them into "RPC unavailable"), and so do node
        # errors; a revert (a contract without EIP-1271, a wallet refusing) means "not valid".
        reply = client.request("eth_call", [{"to": address, "data": "0x" + data.hex()}, "latest"])
        err = reply.get("error")
        if err is not None:
            code = err.get("code") if isinstance(err, dict) else None
            message = str(err.get("message", "") if isinstance(err, dict) else err).lower()
            if code == 3 or "revert" in message:
                return False
            raise RuntimeError(f"eth_call failed: {message[:200]}")
        result = reply.get("result")
        try:
            raw = bytes.fromhex(result[2:]) if isinstance(result, str) and result.startswith("0x") else b""
        except ValueError:
            return False
        return len(raw) >= 4 and raw[:4] == EIP1271_MAGIC


Web3Eip1271Checker = RpcEip1271Checker  # the name it had while web3 made the call
