"""Interoperability with the reference implementation: the JavaScript `siwe` package + `ethers`.

Both directions: messages built and signed by the reference implementation verify with ours
(several shapes, optional fields, resources); messages we serialize, signed with eth-account,
are parsed and verified by the reference implementation.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from ig3.errors import Unauthorized
from ig3.identity.nonces import RedisNonceStore
from ig3.identity.siwe import SiweMessage, parse
from ig3.identity.wallet_login import SIWE_PURPOSE, SiweRules, SiweVerifier

HOST = "127.0.0.1:8080"


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@pytest.fixture
def verifier(redis_url, redis_prefix):
    import redis

    nonces = RedisNonceStore(redis.Redis.from_url(redis_url), prefix=redis_prefix)
    return SiweVerifier(SiweRules(domain=HOST, allowed_chain_ids=frozenset({1, 3338})), nonces), nonces


def test_reference_signed_messages_verify_with_ours(siwe_js, verifier):
    v, nonces = verifier
    now = datetime.now(timezone.utc)
    base = {"domain": HOST, "uri": f"http://{HOST}/v1/auth/login", "version": "1", "issuedAt": _iso(now)}
    specs = [
        {**base, "chainId": 1, "statement": "Sign in to the iG3 gateway."},
        {**base, "chainId": 3338},  # no statement
        {**base, "chainId": 1, "statement": "All optional fields: expiry, not-before, request id, resources.",
         "expirationTime": _iso(now + timedelta(minutes=5)), "notBefore": _iso(now - timedelta(minutes=1)),
         "requestId": "req-42:@x", "resources": ["ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/",
                                                "https://example.com/my-web2-claim.json"]},
        {**base, "chainId": 3338, "scheme": "http", "statement": "With a scheme prefix: ?#[]@!$&'()*+,;=",
         "resources": []},
    ]
    for spec in specs:
        spec["nonce"] = nonces.issue(SIWE_PURPOSE, "", 300)
    signed = siwe_js("sign", specs)
    assert len(signed) == len(specs)
    for spec, item in zip(specs, signed):
        msg = parse(item["message"])
        assert msg.to_text() == item["message"]  # our layout is byte-identical to the reference's
        assert (msg.address, msg.chain_id, msg.nonce) == (item["address"], spec["chainId"], spec["nonce"])
        assert msg.statement == spec.get("statement")
        assert msg.resources == (tuple(spec["resources"]) if "resources" in spec else None)
        who = v.verify(item["message"], item["signature"])
        assert (who.address, who.chain_id, who.via) == (item["address"], spec["chainId"], "eoa")
        with pytest.raises(Unauthorized) as replay:  # the nonce was consumed by the first login
            v.verify(item["message"], item["signature"])
        assert replay.value.code == "invalid_nonce"


def test_reference_signature_over_a_tampered_message_fails_with_ours(siwe_js, verifier):
    v, nonces = verifier
    spec = {"domain": HOST, "uri": f"http://{HOST}/", "version": "1", "chainId": 1,
            "nonce": nonces.issue(SIWE_PURPOSE, "", 300), "issuedAt": _iso(datetime.now(timezone.utc))}
    item = siwe_js("sign", [spec])[0]
    tampered = item["message"].replace("Chain ID: 1", "Chain ID: 3338")
    with pytest.raises(Unauthorized) as exc:
        v.verify(tampered, item["signature"])
    assert exc.value.code == "invalid_signature"


def test_our_messages_verify_with_the_reference(siwe_js):
    acct = Account.create()
    now = datetime.now(timezone.utc)
    msgs = [
        SiweMessage(domain=HOST, address=acct.address, uri=f"http://{HOST}/x", chain_id=1, nonce="abcDEF123456",
                    issued_at=_iso(now)),
        SiweMessage(domain="example.com", address=acct.address, uri="https://example.com", chain_id=3338,
                    nonce="Zz09Zz09Zz09", issued_at=_iso(now), statement="Hello: world/?#[]@",
                    expiration_time=_iso(now + timedelta(hours=1)), not_before=_iso(now - timedelta(hours=1)),
                    request_id="r1", resources=("ipfs://Qm1", "https://example.com/a?b=c#d")),
        SiweMessage(domain="example.com", address=acct.address, uri="https://example.com", chain_id=1,
                    nonce="12345678", issued_at=_iso(now), statement="", scheme="https"),
    ]
    items = []
    for m in msgs:
        text = m.to_text()
        sig = acct.sign_message(encode_defunct(text=text)).signature.hex()
        items.append({"message": text, "signature": "0x" + sig.removeprefix("0x"), "domain": m.domain,
                      "nonce": m.nonce})
    results = siwe_js("verify", items)
    for m, r in zip(msgs, results):
        assert r["ok"], r
        f = r["fields"]
        assert (f["address"], f["chainId"], f["nonce"], f["uri"]) == (m.address, m.chain_id, m.nonce, m.uri)
        assert f["resources"] == (list(m.resources) if m.resources is not None else None)
    # And the reference rejects a signature by another key over our message.
    other = Account.create()
    text = msgs[0].to_text()
    bad = siwe_js("verify", [{"message": text, "signature": "0x" + other.sign_message(
        encode_defunct(text=text)).signature.hex().removeprefix("0x"), "domain": HOST, "nonce": msgs[0].nonce}])
    assert not bad[0]["ok"]
