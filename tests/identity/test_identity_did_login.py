"""DID login over the local DID registry (moto DynamoDB) with the device-registration verifier:
agents get DID tokens for user routes; registered devices get device tokens for device routes."""
from __future__ import annotations

import json

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

import ig3.identity
from ig3.did.local import make_device_identity, publish_local_document
from ig3.errors import Forbidden
from ig3.topology import table_env

from test_identity_http import Client, _error_shape  # noqa: E402 - same API Gateway driver


@pytest.fixture
def did_env(identity_env, aws_env, monkeypatch):
    monkeypatch.setenv("IG3_DID_RESOLVER", "local")
    return aws_env


def _identity(did_env, **kw):
    key, did, doc = make_device_identity(**kw)
    publish_local_document(did_env[table_env("did_registry")], doc)
    return key, did


def _sign(key: str, message: str) -> str:
    return "0x" + Account.from_key(key).sign_message(encode_defunct(text=message)).signature.hex().removeprefix("0x")


def test_agent_did_login(did_env):
    client = Client()
    key, did = _identity(did_env)
    status, ch = client.call("POST", "/v1/auth/did/challenge", body={"did": did})
    assert status == 200 and ch["did"] == did and ch["nonce"] in ch["message"] and did in ch["message"]
    assert ch["message"].startswith("127.0.0.1:8080 wants you to sign in with your peaq DID:")
    body = {"did": did, "nonce": ch["nonce"], "signature": _sign(key, ch["message"])}
    status, tok = client.call("POST", "/v1/auth/did/login", body=body)
    assert status == 200, tok
    p = ig3.identity.authorize(tok["access_token"], "user")
    assert (p.subject, p.kind) == (did, "did")
    with pytest.raises(Forbidden):
        ig3.identity.authorize(tok["access_token"], "device")
    status, err = client.call("POST", "/v1/auth/did/login", body=body)  # replay
    assert status == 401
    _error_shape(err, "invalid_nonce")


def test_device_did_login_needs_a_registered_device(did_env, moto_endpoint):
    import boto3

    client = Client()
    key, did = _identity(did_env)
    status, ch = client.call("POST", "/v1/auth/did/challenge", body={"did": did})
    body = {"did": did, "nonce": ch["nonce"], "signature": _sign(key, ch["message"]), "principal": "device"}
    status, err = client.call("POST", "/v1/auth/did/login", body=body)
    assert status == 403
    _error_shape(err, "not_a_device")
    # Registered (as the devices table's by_did index sees it): device credentials are issued
    ddb = boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name="us-east-1")
    ddb.put_item(TableName=did_env[table_env("devices")],
                 Item={"device_id": {"S": "m1-test-1"}, "did": {"S": did}, "owner": {"S": "0x0"},
                       "status": {"S": "registered"}})
    status, tok = client.call("POST", "/v1/auth/did/login", body=body)  # the nonce survived the 403
    assert status == 200, tok
    p = ig3.identity.authorize(tok["access_token"], "device")
    assert (p.subject, p.kind) == ("m1-test-1", "device")
    with pytest.raises(Forbidden):
        ig3.identity.authorize(tok["access_token"], "user")


def test_did_login_bad_inputs(did_env):
    client = Client()
    key, did = _identity(did_env)
    other_key, other_did = _identity(did_env)
    _, ch = client.call("POST", "/v1/auth/did/challenge", body={"did": did})
    cases = [
        ({"did": did, "nonce": ch["nonce"], "signature": _sign(other_key, ch["message"])}, 401, "signature_mismatch"),
        ({"did": other_did, "nonce": ch["nonce"], "signature": _sign(other_key, ch["message"])}, 401,
         "nonce_did_mismatch"),
        ({"did": did, "nonce": "NeverIssued123", "signature": _sign(key, ch["message"])}, 401, "invalid_nonce"),
        ({"did": did, "nonce": ch["nonce"], "signature": "0xzz"}, 401, "invalid_signature"),
        ({"did": "did:web:example.com", "nonce": ch["nonce"], "signature": "0x00"}, 400, "invalid_did"),
    ]
    for body, status_expected, code in cases:
        status, err = client.call("POST", "/v1/auth/did/login", body=body)
        assert status == status_expected, (body, err)
        _error_shape(err, code)
    # A registration-style signature over a different text does not log in either
    reg = ch["message"].replace("sign in with your peaq DID", "register a device with your peaq DID")
    status, err = client.call("POST", "/v1/auth/did/login",
                              body={"did": did, "nonce": ch["nonce"], "signature": _sign(key, reg)})
    assert status == 401
    # ...and after all those failures the honest login still works (failures never burn the nonce)
    status, tok = client.call("POST", "/v1/auth/did/login",
                              body={"did": did, "nonce": ch["nonce"], "signature": _sign(key, ch["message"])})
    assert status == 200 and json.loads(json.dumps(tok))["principal_type"] == "did"


def test_unknown_did_is_401(did_env):
    client = Client()
    acct = Account.create()
    did = "did:peaq:" + acct.address
    _, ch = client.call("POST", "/v1/auth/did/challenge", body={"did": did})
    status, err = client.call("POST", "/v1/auth/did/login",
                              body={"did": did, "nonce": ch["nonce"], "signature": _sign(acct.key.hex(), ch["message"])})
    assert status == 401
    _error_shape(err, "unknown_did")
