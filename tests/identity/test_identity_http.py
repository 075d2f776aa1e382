"""The auth and keys routes end to end, as API Gateway drives them: proxy events into the api
function's resolver, the REQUEST authorizer's context in front of user routes, real Redis, moto
(DynamoDB, Secrets Manager), real signatures. Every bad input answers 401/403 in the one JSON shape."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from ig3.api import auth_routes, keys_routes
from ig3.api.app import build_resolver
from ig3.identity.siwe import SiweMessage

HOST = "127.0.0.1:8080"
APP = build_resolver([auth_routes.router, keys_routes.router])
METHOD_ARN = "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/local/{method}{path}"


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def proxy_event(method: str, path: str, *, body=None, headers=None, authorizer=None, resource=None,
                path_params=None) -> dict:
    return {
        "resource": resource or path, "path": path, "httpMethod": method,
        "headers": headers or {}, "multiValueHeaders": {k: [v] for k, v in (headers or {}).items()},
        "queryStringParameters": None, "multiValueQueryStringParameters": None,
        "pathParameters": path_params, "stageVariables": None,
        "requestContext": {"resourcePath": resource or path, "httpMethod": method, "stage": "local",
                           "requestId": "req-1", "path": path, "identity": {"sourceIp": "127.0.0.1"},
                           "authorizer": authorizer},
        "body": json.dumps(body) if isinstance(body, (dict, list)) else body, "isBase64Encoded": False,
    }


class Client:
    """Calls the resolver like API Gateway: the authorizer first for non-"none" routes."""

    def __init__(self):
        from ig3_functions.authorizer.handler import handler as authorizer_handler

        self._authorizer = authorizer_handler

    def call(self, method, path, *, body=None, token=None, resource=None, path_params=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        ctx = None
        if resource or path.startswith("/v1/keys"):
            auth_event = {"type": "REQUEST", "methodArn": METHOD_ARN.format(method=method, path=path),
                          "resource": resource or path, "path": path, "httpMethod": method, "headers": headers}
            try:
                result = self._authorizer(auth_event, None)
            except Exception as exc:  # API Gateway's own 401 (its body is not ours)
                assert str(exc) == "Unauthorized"
                return 401, {"message": "Unauthorized"}
            ctx = {**result["context"], "principalId": result["principalId"]}
        resp = APP.resolve(proxy_event(method, path, body=body, headers=headers, authorizer=ctx, resource=resource,
                                       path_params=path_params), None)
        return resp["statusCode"], json.loads(resp["body"])


def _error_shape(body, code=None):
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "code"}
    if code:
        assert body["error"]["code"] == code, body


def _login(client, acct, **changes):
    status, nonce = client.call("GET", "/v1/auth/nonce")
    assert status == 200 and nonce["domain"] == HOST and len(nonce["nonce"]) >= 8
    fields = dict(domain=HOST, address=acct.address, uri=f"http://{HOST}/v1/auth/login", chain_id=1,
                  nonce=nonce["nonce"], issued_at=_iso(datetime.now(timezone.utc)), statement="Sign in to iG3")
    fields.update(changes)
    text = SiweMessage(**fields).to_text()
    sig = "0x" + acct.sign_message(encode_defunct(text=text)).signature.hex().removeprefix("0x")
    return client.call("POST", "/v1/auth/login", body={"message": text, "signature": sig}), text, sig


@pytest.fixture
def client(identity_env):
    return Client()


def test_siwe_login_keys_lifecycle(client):
    acct = Account.create()
    (status, body), text, sig = _login(client, acct)
    assert status == 200, body
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900 and body["address"] == acct.address
    token = body["access_token"]

    status, created = client.call("POST", "/v1/keys", token=token, body={"name": "ci", "scopes": ["llm"],
                                                                         "rpm_limit": 60, "tpm_limit": 1000,
                                                                         "budget": 10_000})
    assert status == 201, created
    key = created["key"]
    assert key.startswith("ig3_sk_") and created["rpm_limit"] == 60 and created["budget"] == 10_000

    status, listed = client.call("GET", "/v1/keys", token=token)
    assert status == 200 and [k["id"] for k in listed["data"]] == [created["id"]]
    assert key not in json.dumps(listed)

    # The key acts for the wallet, with the key's limits in the authorizer context
    from ig3_functions.authorizer.handler import handler

    ctx = handler({"type": "REQUEST", "methodArn": METHOD_ARN.format(method="GET", path="/v1/tasks/1"),
                   "headers": {"authorization": f"bearer {key}"}}, None)["context"]
    assert ctx["principal"] == acct.address and ctx["principal_type"] == "apikey" and ctx["key_id"] == created["id"]
    assert (ctx["rpm_limit"], ctx["tpm_limit"], ctx["budget"], ctx["scopes"]) == ("60", "1000", "10000", "llm")

    # A key without the "keys" scope cannot manage keys: 403 in the one shape
    status, body = client.call("GET", "/v1/keys", token=key)
    assert status == 403
    _error_shape(body, "insufficient_scope")

    status, body = client.call("DELETE", f"/v1/keys/{created['id']}", token=token, resource="/v1/keys/{id}",
                               path_params={"id": created["id"]})
    assert status == 200 and body["revoked"] is True
    # Revoked key: the authorizer answers API Gateway's 401
    status, _ = client.call("GET", "/v1/keys", token=key)
    assert status == 401

    # The replayed login is rejected
    status, body = client.call("POST", "/v1/auth/login", body={"message": text, "signature": sig})
    assert status == 401
    _error_shape(body, "invalid_nonce")


@pytest.mark.parametrize("changes, code", [  # times computed when the case runs, not at collection
    (lambda: dict(domain="evil.example", uri="https://evil.example/"), "siwe_domain_mismatch"),
    (lambda: dict(chain_id=137), "siwe_chain_not_allowed"),
    (lambda: dict(expiration_time=_iso(datetime.now(timezone.utc) - timedelta(minutes=3))), "siwe_expired"),
    (lambda: dict(not_before=_iso(datetime.now(timezone.utc) + timedelta(minutes=3))), "siwe_not_yet_valid"),
])
def test_bad_siwe_logins_answer_401_json(client, changes, code):
    (status, body), _, _ = _login(client, Account.create(), **changes())
    assert status == 401
    _error_shape(body, code)


def test_login_body_errors(client):
    acct = Account.create()
    status, body = client.call("POST", "/v1/auth/login", body={"message": "not siwe", "signature": "0x00"})
    assert status == 401
    _error_shape(body, "invalid_siwe_message")
    status, body = client.call("POST", "/v1/auth/login", body={"message": "x"})
    assert status == 400
    _error_shape(body, "validation_error")
    (status, body), text, _ = _login(client, acct)
    other_sig = "0x" + Account.create().sign_message(encode_defunct(text=text)).signature.hex().removeprefix("0x")
    status, body = client.call("POST", "/v1/auth/login", body={"message": text, "signature": other_sig})
    assert status == 401  # (nonce already spent by the first login, or signature of another address)
    _error_shape(body)


def test_signature_of_another_address_is_401(client):
    acct, other = Account.create(), Account.create()
    status, nonce = client.call("GET", "/v1/auth/nonce")
    text = SiweMessage(domain=HOST, address=acct.address, uri=f"http://{HOST}/", chain_id=1, nonce=nonce["nonce"],
                       issued_at=_iso(datetime.now(timezone.utc))).to_text()
    sig = "0x" + other.sign_message(encode_defunct(text=text)).signature.hex().removeprefix("0x")
    status, body = client.call("POST", "/v1/auth/login", body={"message": text, "signature": sig})
    assert status == 401
    _error_shape(body, "invalid_signature")


def test_keys_routes_need_credentials(client):
    assert client.call("GET", "/v1/keys")[0] == 401
    assert client.call("GET", "/v1/keys", token="eyJhbGciOiJub25lIn0.e30.")[0] == 401  # alg none
    status, body = client.call("POST", "/v1/keys", token="ig3_sk_nope")
    assert status == 401
