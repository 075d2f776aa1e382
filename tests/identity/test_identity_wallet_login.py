"""SIWE verification: every bad input of the issue is a 401 with its own code; nonces are single-use
under concurrency; contract wallets (EIP-1271) verify through a JSON-RPC endpoint."""
from __future__ import annotations

import dataclasses
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ig3.errors import Unauthorized
from ig3.identity.nonces import MemoryNonceStore, RedisNonceStore
from ig3.identity.siwe import SiweMessage, parse
from ig3.identity.wallet_login import SIWE_PURPOSE, SiweRules, SiweVerifier, RpcEip1271Checker, eip191_hash

HOST = "127.0.0.1:8080"
RULES = SiweRules(domain=HOST, allowed_chain_ids=frozenset({1, 3338}), clock_skew_s=60, max_age_s=600)


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _sign(acct, msg: SiweMessage) -> tuple[str, str]:
    text = msg.to_text()
    return text, "0x" + acct.sign_message(encode_defunct(text=text)).signature.hex().removeprefix("0x")


@pytest.fixture
def nonces(redis_url, redis_prefix):
    import redis

    return RedisNonceStore(redis.Redis.from_url(redis_url), prefix=redis_prefix)


@pytest.fixture
def acct():
    return Account.create()


def _msg(acct, nonce: str, **kw) -> SiweMessage:
    now = datetime.now(timezone.utc)
    fields = dict(domain=HOST, address=acct.address, uri=f"http://{HOST}/v1/auth/login", chain_id=1, nonce=nonce,
                  issued_at=_iso(now), statement="Sign in to iG3")
    fields.update(kw)
    return SiweMessage(**fields)


def test_valid_login_then_replay_is_rejected(nonces, acct):
    v = SiweVerifier(RULES, nonces)
    text, sig = _sign(acct, _msg(acct, nonces.issue(SIWE_PURPOSE, "", 300)))
    who = v.verify(text, sig)
    assert (who.address, who.chain_id, who.via) == (acct.address, 1, "eoa")
    with pytest.raises(Unauthorized) as exc:
        v.verify(text, sig)
    assert exc.value.code == "invalid_nonce" and exc.value.status == 401


def _now():
    return datetime.now(timezone.utc)


# Times are computed when a case runs, not at collection: a long suite must not age them.
BAD_CASES = {
    "wrong domain": (lambda: dict(domain="evil.example", uri="http://evil.example/"), "siwe_domain_mismatch"),
    "uri on another host": (lambda: dict(uri="https://evil.example/login"), "siwe_uri_mismatch"),
    "non-http uri": (lambda: dict(uri=f"ftp://{HOST}/"), "siwe_uri_mismatch"),
    "wrong chain": (lambda: dict(chain_id=137), "siwe_chain_not_allowed"),
    "expired": (lambda: dict(expiration_time=_iso(_now() - timedelta(minutes=5))), "siwe_expired"),
    "not yet valid": (lambda: dict(not_before=_iso(_now() + timedelta(minutes=5))), "siwe_not_yet_valid"),
    "issued in the future": (lambda: dict(issued_at=_iso(_now() + timedelta(minutes=5))), "siwe_not_yet_valid"),
    "issued long ago": (lambda: dict(issued_at=_iso(_now() - timedelta(hours=2))), "siwe_expired"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_messages_are_401_with_a_specific_code_and_keep_the_nonce(case, nonces, acct):
    make_changes, code = BAD_CASES[case]
    changes = make_changes()
    v = SiweVerifier(RULES, nonces)
    nonce = nonces.issue(SIWE_PURPOSE, "", 300)
    text, sig = _sign(acct, _msg(acct, nonce, **changes))
    with pytest.raises(Unauthorized) as exc:
        v.verify(text, sig)
    assert (exc.value.status, exc.value.code) == (401, code)
    body = exc.value.body()["error"]
    assert set(body) == {"type", "message", "code"} and sig[2:20] not in body["message"]
    # a rejected message does not burn the nonce: an honest retry still works
    text, sig = _sign(acct, _msg(acct, nonce))
    assert v.verify(text, sig).address == acct.address


def test_public_gateway_requires_https(nonces, acct):
    rules = dataclasses.replace(RULES, domain="api.ig3.example", require_https=True)
    v = SiweVerifier(rules, nonces)
    nonce = nonces.issue(SIWE_PURPOSE, "", 300)
    for changes, code in ((dict(uri="http://api.ig3.example/login"), "siwe_uri_mismatch"),
                          (dict(scheme="http", uri="https://api.ig3.example/"), "siwe_scheme_mismatch")):
        text, sig = _sign(acct, _msg(acct, nonce, domain="api.ig3.example", **changes))
        with pytest.raises(Unauthorized) as exc:
            v.verify(text, sig)
        assert exc.value.code == code
    text, sig = _sign(acct, _msg(acct, nonce, domain="api.ig3.example", scheme="https",
                                 uri="https://api.ig3.example/login"))
    assert v.verify(text, sig).address == acct.address


def test_signature_of_another_address(nonces, acct):
    other = Account.create()
    msg = _msg(acct, nonces.issue(SIWE_PURPOSE, "", 300))
    text = msg.to_text()
    _, sig = _sign(other, msg)
    with pytest.raises(Unauthorized) as exc:
        SiweVerifier(RULES, nonces).verify(text, sig)
    assert exc.value.code == "invalid_signature" and "another address" in exc.value.message


@pytest.mark.parametrize("message, signature, code", [
    ("hello", "0x00", "invalid_siwe_message"),
    ("x" * 10000, "0x00", "invalid_siwe_message"),
    (None, "0x00", "invalid_siwe_message"),
])
def test_malformed_messages(nonces, message, signature, code):
    with pytest.raises(Unauthorized) as exc:
        SiweVerifier(RULES, nonces).verify(message, signature)
    assert exc.value.code == code


@pytest.mark.parametrize("signature", ["", "0xzz", "0x" + "00" * 65, "0x1234", "not hex"])
def test_malformed_signatures(nonces, acct, signature):
    text = _msg(acct, nonces.issue(SIWE_PURPOSE, "", 300)).to_text()
    with pytest.raises(Unauthorized) as exc:
        SiweVerifier(RULES, nonces).verify(text, signature)
    assert exc.value.code == "invalid_signature"


def test_unknown_nonce(nonces, acct):
    text, sig = _sign(acct, _msg(acct, "NeverIssued1234"))
    with pytest.raises(Unauthorized) as exc:
        SiweVerifier(RULES, nonces).verify(text, sig)
    assert exc.value.code == "invalid_nonce"


def test_expired_nonce(redis_url, redis_prefix, acct):
    import time

    import redis

    store = RedisNonceStore(redis.Redis.from_url(redis_url), prefix=redis_prefix)
    nonce = store.issue(SIWE_PURPOSE, "", 1)
    text, sig = _sign(acct, _msg(acct, nonce))
    time.sleep(1.2)
    with pytest.raises(Unauthorized) as exc:
        SiweVerifier(RULES, store).verify(text, sig)
    assert exc.value.code == "invalid_nonce"


def test_redis_down_is_a_503_not_a_500(acct):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from ig3.errors import Unavailable

    dead = RedisNonceStore(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2,
                                       retry=Retry(NoBackoff(), 0)))
    with pytest.raises(Unavailable) as exc:
        dead.issue(SIWE_PURPOSE, "", 300)
    assert exc.value.status == 503
    text, sig = _sign(acct, _msg(acct, "abcdefgh1234"))
    with pytest.raises(Unavailable):
        SiweVerifier(RULES, dead).verify(text, sig)


def test_concurrent_logins_with_one_nonce_exactly_one_wins(nonces, acct):
    v = SiweVerifier(RULES, nonces)
    v.verify(*_sign(acct, _msg(acct, nonces.issue(SIWE_PURPOSE, "", 300))))  # warm eth-account import
    text, sig = _sign(acct, _msg(acct, nonces.issue(SIWE_PURPOSE, "", 300)))
    barrier = threading.Barrier(16)

    def attempt(_):
        barrier.wait()
        try:
            v.verify(text, sig)
            return "ok"
        except Unauthorized as exc:
            return exc.code

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(attempt, range(16)))
    assert outcomes.count("ok") == 1 and outcomes.count("invalid_nonce") == 15


FIELD_CHANGES = {
    "domain": lambda m: dataclasses.replace(m, domain="127.0.0.1:8081"),
    "statement": lambda m: dataclasses.replace(m, statement=(m.statement or "") + "!"),
    "uri": lambda m: dataclasses.replace(m, uri=m.uri + "x"),
    "chain_id": lambda m: dataclasses.replace(m, chain_id=3338 if m.chain_id == 1 else 1),
    "nonce": lambda m: dataclasses.replace(m, nonce=m.nonce + "0"),
    "issued_at": lambda m: dataclasses.replace(m, issued_at=_iso(m.issued_at_dt - timedelta(seconds=1))),
    "expiration_time": lambda m: dataclasses.replace(m, expiration_time=_iso(_now() + timedelta(minutes=9))),
    "request_id": lambda m: dataclasses.replace(m, request_id="other"),
    "resources": lambda m: dataclasses.replace(m, resources=("https://example.com/extra",)),
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(sorted(FIELD_CHANGES)))
def test_changing_any_field_after_signing_breaks_the_signature(field):
    """A valid message with one field changed (still syntactically valid) is never accepted."""
    acct = Account.from_key(b"\x11" * 32)
    store = MemoryNonceStore()
    rules = dataclasses.replace(RULES, domain="127.0.0.1:8080")
    nonce = store.issue(SIWE_PURPOSE, "", 300)
    msg = _msg(acct, nonce)
    _, sig = _sign(acct, msg)
    changed = FIELD_CHANGES[field](msg)
    assert changed.to_text() != msg.to_text()
    with pytest.raises(Unauthorized):
        SiweVerifier(rules, store).verify(changed.to_text(), sig)
    assert SiweVerifier(rules, store).verify(msg.to_text(), sig).address == acct.address


# --- EIP-1271 ---------------------------------------------------------------------------------

class ContractWalletRpc:
    """A JSON-RPC endpoint standing in for a chain with one EIP-1271 smart wallet deployed.

    ``eth_call`` to the wallet with ``isValidSignature(bytes32,bytes)`` runs the wallet's logic
    (the usual owner-signs scheme: ECDSA-recover the hash, compare with the owner) and returns
    the ABI-encoded magic value or 0xffffffff; calls to any other address revert like an EOA.
    """

    def __init__(self, wallet: str, owner: str, chain_id: int):
        self.wallet, self.owner, self.chain_id, self.calls = wallet.lower(), owner, chain_id, 0
        rpc = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["content-length"])))
                body = json.dumps(rpc.answer(req)).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, req):
        from eth_abi import decode, encode
        from eth_keys import keys

        method, rid = req["method"], req.get("id")
        if method == "eth_chainId":
            return {"jsonrpc": "2.0", "id": rid, "result": hex(self.chain_id)}
        if method != "eth_call":
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "method not found"}}
        call = req["params"][0]
        self.calls += 1
        data = bytes.fromhex(call.get("data", call.get("input", "0x"))[2:])
        if call["to"].lower() != self.wallet or data[:4] != bytes.fromhex("1626ba7e"):
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": 3, "message": "execution reverted", "data": "0x"}}
        digest, sig = decode(["bytes32", "bytes"], data[4:])
        try:
            v = sig[64] - 27 if sig[64] >= 27 else sig[64]
            signer = keys.Signature(sig[:64] + bytes([v])).recover_public_key_from_msg_hash(digest)
            ok = signer.to_checksum_address() == self.owner
        except Exception:  # noqa: BLE001
            ok = False
        magic = bytes.fromhex("1626ba7e" if ok else "ffffffff")
        return {"jsonrpc": "2.0", "id": rid, "result": "0x" + encode(["bytes4"], [magic]).hex()}

    def close(self):
        self.server.shutdown()


@pytest.fixture
def contract_wallet():
    owner = Account.create()
    wallet = Account.create().address  # the contract's address: no key signs for it directly
    rpc = ContractWalletRpc(wallet, owner.address, 3338)
    yield rpc, wallet, owner
    rpc.close()


def _contract_msg(wallet: str, nonce: str) -> SiweMessage:
    return SiweMessage(domain=HOST, address=wallet, uri=f"http://{HOST}/", chain_id=3338, nonce=nonce,
                       issued_at=_iso(_now()))


def test_eip1271_contract_wallet_signature_accepted(nonces, contract_wallet):
    rpc, wallet, owner = contract_wallet
    v = SiweVerifier(RULES, nonces, contract_checker=RpcEip1271Checker({3338: rpc.url}))
    text = _contract_msg(wallet, nonces.issue(SIWE_PURPOSE, "", 300)).to_text()
    sig = "0x" + owner.sign_message(encode_defunct(text=text)).signature.hex().removeprefix("0x")
    who = v.verify(text, sig)
    assert (who.address, who.via) == (wallet, "eip1271") and rpc.calls == 1


def test_eip1271_signature_by_someone_else_rejected(nonces, contract_wallet):
    rpc, wallet, _ = contract_wallet
    v = SiweVerifier(RULES, nonces, contract_checker=RpcEip1271Checker({3338: rpc.url}))
    text = _contract_msg(wallet, nonces.issue(SIWE_PURPOSE, "", 300)).to_text()
    sig = "0x" + Account.create().sign_message(encode_defunct(text=text)).signature.hex().removeprefix("0x")
    with pytest.raises(Unauthorized) as exc:
        v.verify(text, sig)
    assert exc.value.code == "invalid_signature" and rpc.calls == 1


def test_eip1271_not_consulted_without_rpc_for_the_chain(nonces, contract_wallet):
    rpc, wallet, owner = contract_wallet
    v = SiweVerifier(RULES, nonces, contract_checker=RpcEip1271Checker({1: rpc.url}))  # not chain 3338
    text = _contract_msg(wallet, nonces.issue(SIWE_PURPOSE, "", 300)).to_text()
    sig = "0x" + owner.sign_message(encode_defunct(text=text)).signature.hex().removeprefix("0x")
    with pytest.raises(Unauthorized):
        v.verify(text, sig)
    assert rpc.calls == 0


def test_eip1271_rpc_down_is_a_401_not_a_500(nonces):
    owner = Account.create()
    wallet = Account.create().address
    v = SiweVerifier(RULES, nonces, contract_checker=RpcEip1271Checker({3338: "http://127.0.0.1:9"}, timeout_s=1))
    text = _contract_msg(wallet, nonces.issue(SIWE_PURPOSE, "", 300)).to_text()
    sig = "0x" + owner.sign_message(encode_defunct(text=text)).signature.hex().removeprefix("0x")
    with pytest.raises(Unauthorized) as exc:
        v.verify(text, sig)
    assert "RPC unavailable" in exc.value.message


def test_eip191_hash_matches_eth_account():
    from eth_account.messages import _hash_eip191_message

    text = _msg(Account.create(), "abcdefgh").to_text()
    assert eip191_hash(text) == _hash_eip191_message(encode_defunct(text=text))
    assert parse(text).to_text() == text
