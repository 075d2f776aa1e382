"""ES256 access tokens: keys from Secrets Manager (moto server), kid rotation, RFC 8725 rejections,
interoperability with PyJWT in both directions."""
from __future__ import annotations

import base64
import json
import time
import uuid

import boto3
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ig3.errors import Unauthorized
from ig3.identity.tokens import (SecretsManagerKeySource, TokenService, ensure_signing_secret, parse_keyset,
                                 rotate_secret)

ISS, AUD = "https://127.0.0.1:8080", "ig3-api"


@pytest.fixture
def sm(aws_env, moto_endpoint):
    return boto3.client("secretsmanager", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def secret_id(sm):
    sid = f"ig3/test/jwt-{uuid.uuid4().hex[:8]}"
    assert ensure_signing_secret(sid, sm) is True
    assert ensure_signing_secret(sid, sm) is False  # idempotent
    return sid


def _service(sm, secret_id, **kw) -> TokenService:
    return TokenService(SecretsManagerKeySource(secret_id, client=sm, min_refresh_s=0), issuer=ISS, audience=AUD, **kw)


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _claims(**kw):
    now = int(time.time())
    c = {"iss": ISS, "aud": AUD, "sub": "0xabc", "iat": now, "nbf": now, "exp": now + 600, "jti": "j1",
         "ptype": "wallet", "scope": "*", "tier": "standard"}
    c.update(kw)
    return c


def _current_pem(sm, secret_id):
    entry = json.loads(sm.get_secret_value(SecretId=secret_id)["SecretString"])["current"]
    return entry["kid"], entry["private_key"]


def test_issue_and_verify(sm, secret_id):
    svc = _service(sm, secret_id)
    token, ttl = svc.issue("0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B", "wallet", ["*"], "standard")
    assert ttl == 900
    c = svc.verify(token)
    assert (c.subject, c.principal_type, c.scopes, c.tier) == ("0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B",
                                                               "wallet", ("*",), "standard")
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "ES256" and header["typ"] == "at+jwt" and header["kid"]


def test_pyjwt_verifies_our_tokens_and_we_verify_pyjwts(sm, secret_id):
    svc = _service(sm, secret_id)
    kid, pem = _current_pem(sm, secret_id)
    public = serialization.load_pem_private_key(pem.encode(), None).public_key()
    token, _ = svc.issue("did:peaq:0x1", "did", ["llm", "tasks"], "gold")
    decoded = pyjwt.decode(token, public, algorithms=["ES256"], audience=AUD, issuer=ISS,
                           options={"require": ["exp", "iat", "nbf", "jti", "sub"]})
    assert decoded["sub"] == "did:peaq:0x1" and decoded["scope"] == "llm tasks"
    theirs = pyjwt.encode(_claims(sub="0xdef"), pem, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"})
    assert svc.verify(theirs).subject == "0xdef"


def test_rotation_keeps_old_tokens_valid_and_signs_with_the_new_kid(sm, secret_id):
    issuer = _service(sm, secret_id)
    verifier = _service(sm, secret_id)  # another container, keys cached before the rotation
    old_token, _ = issuer.issue("0x1", "wallet", ["*"], "standard")
    assert verifier.verify(old_token).subject == "0x1"
    new_kid = rotate_secret(secret_id, sm)
    issuer2 = _service(sm, secret_id)
    new_token, _ = issuer2.issue("0x2", "wallet", ["*"], "standard")
    assert json.loads(base64.urlsafe_b64decode(new_token.split(".")[0] + "=="))["kid"] == new_kid
    assert verifier.verify(new_token).subject == "0x2"  # unknown kid -> one refresh of the secret
    assert issuer2.verify(old_token).subject == "0x1"  # the previous key still verifies
    for _ in range(3):
        rotate_secret(secret_id, sm)
    with pytest.raises(Unauthorized):  # rotated out of the kept previous keys
        _service(sm, secret_id).verify(old_token)


def test_placeholder_secret_is_initialized_once(sm):
    sid = f"ig3/test/jwt-{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=sid, SecretString="placeholder-from-infrastructure")
    verifier = _service(sm, sid)
    with pytest.raises(Unauthorized):  # verification never writes: nothing can be signed yet
        verifier.verify(f"{_b64({'alg': 'ES256', 'typ': 'at+jwt', 'kid': 'x'})}.{_b64(_claims())}.AAAA")
    a, b = _service(sm, sid), _service(sm, sid)
    ta, _ = a.issue("0x1", "wallet", ["*"], "standard")
    tb, _ = b.issue("0x2", "wallet", ["*"], "standard")
    assert parse_keyset(sm.get_secret_value(SecretId=sid)["SecretString"]).current.kid
    assert _service(sm, sid).verify(ta).subject == "0x1" and _service(sm, sid).verify(tb).subject == "0x2"


def test_missing_secret_is_created_by_the_issuer(sm):
    sid = f"ig3/test/jwt-{uuid.uuid4().hex[:8]}"
    token, _ = _service(sm, sid).issue("0x1", "wallet", ["*"], "standard")
    assert _service(sm, sid).verify(token).subject == "0x1"


def _forge(kid, pem, **claims):
    return pyjwt.encode(_claims(**claims), pem, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"})


def test_rfc8725_rejections(sm, secret_id):
    svc = _service(sm, secret_id)
    kid, pem = _current_pem(sm, secret_id)
    public_pem = serialization.load_pem_private_key(pem.encode(), None).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    good = _forge(kid, pem)
    h, p, s = good.split(".")
    other_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    import hmac as _hmac
    import hashlib

    hs_input = f"{_b64({'alg': 'HS256', 'typ': 'at+jwt', 'kid': kid})}.{p}"
    hs_sig = base64.urlsafe_b64encode(_hmac.new(public_pem, hs_input.encode(), hashlib.sha256).digest()).rstrip(b"=")
    cases = {
        "alg none": (f"{_b64({'alg': 'none', 'typ': 'at+jwt', 'kid': kid})}.{p}.", "not accepted"),
        "alg None": (f"{_b64({'alg': 'None', 'typ': 'at+jwt', 'kid': kid})}.{p}.", "not accepted"),
        "HS256 keyed with the public key": (f"{hs_input}.{hs_sig.decode()}", "not accepted"),
        "tampered payload": (f"{h}.{_b64(_claims(sub='0xattacker'))}.{s}", "signature is invalid"),
        "tampered signature": (f"{h}.{p}.{s[:-4]}AAAA", "invalid"),
        "signed by another key": (_forge(kid, other_key), "signature is invalid"),
        "unknown kid": (_forge("nope", pem), "unknown key"),
        "no typ": (pyjwt.encode(_claims(), pem, algorithm="ES256", headers={"kid": kid}), "typ"),
        "extra header (jku)": (pyjwt.encode(_claims(), pem, algorithm="ES256",
                                            headers={"kid": kid, "typ": "at+jwt", "jku": "https://evil"}), "typ"),
        "expired": (_forge(kid, pem, exp=int(time.time()) - 120), "expired"),
        "not yet valid": (_forge(kid, pem, nbf=int(time.time()) + 600), "not valid yet"),
        "issued in the future": (_forge(kid, pem, iat=int(time.time()) + 600), "not valid yet"),
        "wrong audience": (_forge(kid, pem, aud="someone-else"), "audience"),
        "wrong issuer": (_forge(kid, pem, iss="https://evil"), "issuer"),
        "no jti": (pyjwt.encode({k: v for k, v in _claims().items() if k != "jti"}, pem, algorithm="ES256",
                                headers={"kid": kid, "typ": "at+jwt"}), "jti"),
        "unknown principal type": (_forge(kid, pem, ptype="admin"), "principal type"),
        "two parts": (f"{h}.{p}", "malformed"),
        "garbage header": (f"!!!.{p}.{s}", "malformed"),
        "padded base64": (f"{h}=.{p}.{s}", "malformed"),
    }
    assert svc.verify(good).subject == "0xabc"
    for name, (token, why) in cases.items():
        with pytest.raises(Unauthorized) as exc:
            svc.verify(token)
        assert why in exc.value.message, (name, exc.value.message)
        assert exc.value.status == 401 and token not in exc.value.message


def test_cached_token_still_expires(sm, secret_id):
    now = [time.time()]
    svc = _service(sm, secret_id, clock=lambda: now[0], ttl_s=60, leeway_s=0)
    token, _ = svc.issue("0x1", "wallet", ["*"], "standard")
    assert svc.verify(token).subject == "0x1"
    now[0] += 61
    with pytest.raises(Unauthorized) as exc:
        svc.verify(token)
    assert exc.value.code == "token_expired"


def test_operator_cli_init_and_rotate(sm, monkeypatch, capsys):
    from ig3.identity.__main__ import main

    sid = f"ig3/test/jwt-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("IG3_JWT_SECRET_ID", sid)
    assert main(["init-jwt-key"]) == 0 and "created" in capsys.readouterr().out
    before = parse_keyset(sm.get_secret_value(SecretId=sid)["SecretString"]).current.kid
    assert main(["rotate-jwt-key"]) == 0
    after = parse_keyset(sm.get_secret_value(SecretId=sid)["SecretString"])
    assert after.current.kid != before and before in after.verification
