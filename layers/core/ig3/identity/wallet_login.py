"""Sign-In with Ethereum: every check EIP-4361 asks of a relying party, in a fixed order.

Order, and why: the cheap, stateless checks (syntax, domain, URI, chain, times) run first; the
signature next; the nonce is consumed LAST, atomically, and only for a message whose signature
is valid — so nobody can burn another user's nonce with a forged message, and of two
concurrent logins with the same signed message exactly one succeeds.

Signatures: EIP-191 ``personal_sign`` recovered with eth-account (imported lazily: it costs
~0.3-0.8 s to import and only the login path needs it). Contract wallets (EIP-1271) are checked
with ``isValidSignature(bytes32,bytes)`` over JSON-RPC ``eth_call`` when an RPC URL is configured
for the message's chain; web3 is imported only there.

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
    from Crypto.Hash import keccak

    data = text.encode()
    return keccak.new(digest_bits=256, data=b"\x19Ethereum Signed Message:\n" + str(len(data)).encode() + data).digest()


def recover_eip191(text: str, signature: bytes) -> str:
    """The checksummed address whose key produced this personal_sign signature."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    return Account.recover_message(encode_defunct(text=text), signature=signature)


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


class Web3Eip1271Checker:
    """EIP-1271 ``isValidSignature(bytes32,bytes)`` over JSON-RPC, one web3 client per chain."""

    SELECTOR = bytes.fromhex("1626ba7e")

    def __init__(self, rpc_urls: dict[int, str], timeout_s: float = 5.0):
        self._urls = dict(rpc_urls)
        self._timeout = timeout_s
        self._clients: dict[int, Any] = {}

    def _web3(self, chain_id: int) -> Any | None:
        if chain_id not in self._urls:
            return None
        w3 = self._clients.get(chain_id)
        if w3 is None:
            from web3 import HTTPProvider, Web3  # lazy: ~0.6 s import, only contract wallets need it

            w3 = self._clients[chain_id] = Web3(HTTPProvider(self._urls[chain_id],
                                                             request_kwargs={"timeout": self._timeout}))
        return w3

    def is_valid(self, chain_id: int, address: str, message_hash: bytes, signature: bytes) -> bool:
        w3 = self._web3(chain_id)
        if w3 is None:
            return False
        from eth_abi import encode

        data = self.SELECTOR + encode(["bytes32", "bytes"], [message_hash, signature])
        try:
            result = bytes(w3.eth.call({"to": address, "data": "0x" + data.hex()}))
        except Exception as exc:  # a revert (e.g. no contract at the address) means "not valid"
            if type(exc).__name__ in ("ContractLogicError", "ContractCustomError", "ContractPanicError"):
                return False
            raise
        return len(result) >= 4 and result[:4] == EIP1271_MAGIC

