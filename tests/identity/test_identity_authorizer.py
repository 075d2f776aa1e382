"""``ig3.identity.authorize`` (what the local HTTP front and the LLM API call) and the API Gateway
REQUEST authorizer function, with real events, real tokens and keys, moto and Redis behind."""
from __future__ import annotations

import pytest

import ig3.identity
from ig3.errors import Forbidden, Unauthorized
from ig3.identity import service
from ig3.topology import TOPOLOGY

ARN = "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/prod/{method}{path}"
WALLET = "0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B"


@pytest.fixture
def creds(identity_env):
    tokens = service.token_service()
    wallet_jwt, _ = tokens.issue(WALLET, "wallet", ["*"], "standard")
    did_jwt, _ = tokens.issue("did:peaq:0x" + "12" * 20, "did", ["llm"], "standard")
    device_jwt, _ = tokens.issue("dev-123", "device", ["device"], "standard")
    key, rec = service.api_key_service().create(WALLET, name="bot", scopes=["llm"], caller_scopes=frozenset({"*"}),
                                                rpm_limit=10)
    return {"wallet": wallet_jwt, "did": did_jwt, "device": device_jwt, "apikey": key, "key_id": rec.key_id}


def test_route_kinds(creds):
    auth = ig3.identity.authorize
    p = auth(creds["wallet"], "user")
    assert (p.subject, p.kind, p.scopes) == (WALLET, "wallet", frozenset({"*"}))
    p = auth("Bearer " + creds["apikey"], "user")
    assert (p.subject, p.kind, p.key_id, p.rpm_limit, p.tpm_limit) == (WALLET, "apikey", creds["key_id"], 10, None)
    assert auth(creds["did"], "any").kind == "did"
    assert auth(creds["device"], "device").subject == "dev-123"
    assert auth(creds["device"], "any").kind == "device"
    assert auth(None, "none") is None and auth("garbage", "none") is None
    for kind in ("wallet", "did", "apikey"):
        with pytest.raises(Forbidden) as exc:
            auth(creds[kind], "device")
        assert exc.value.status == 403 and exc.value.code == "device_credentials_required"
    with pytest.raises(Forbidden) as exc:
        auth(creds["device"], "user")
    assert exc.value.code == "user_credentials_required"
    with pytest.raises(ValueError):
        auth(creds["wallet"], "admin")


@pytest.mark.parametrize("token, code", [
    (None, "missing_credentials"), ("", "missing_credentials"), ("Bearer ", "missing_credentials"),
    ("not-a-token", "invalid_token"), ("a.b.c", "invalid_token"), ("ig3_sk_0123", "invalid_api_key"),
])
def test_bad_credentials_are_401_json_with_a_challenge(creds, token, code):
    with pytest.raises(Unauthorized) as exc:
        ig3.identity.authorize(token, "user")
    e = exc.value
    assert (e.status, e.code) == (401, code)
    assert e.body() == {"error": {"type": "authentication_error", "message": e.message, "code": code}}
    assert e.headers["WWW-Authenticate"].startswith("Bearer")


def test_key_for_another_scope_is_403(creds):
    p = ig3.identity.authorize(creds["apikey"], "user")
    p.require_scope("llm")
    with pytest.raises(Forbidden) as exc:
        p.require_scope("billing")
    assert exc.value.status == 403 and exc.value.code == "insufficient_scope"


def _request_event(token_header: dict, method="GET", path="/v1/tasks/abc", resource="/v1/tasks/{id}"):
    return {"type": "REQUEST", "methodArn": ARN.format(method=method, path=path), "resource": resource,
            "path": path, "httpMethod": method, "headers": token_header, "multiValueHeaders": None,
            "queryStringParameters": {}, "pathParameters": {"id": "abc"}, "stageVariables": {},
            "requestContext": {"resourcePath": resource, "httpMethod": method, "stage": "prod",
                               "accountId": "123456789012", "apiId": "abcdef1234"}}


def _allowed(result) -> list[str]:
    stmt = result["policyDocument"]["Statement"]
    return [r for s in stmt if s["Effect"] == "Allow" for r in s["Resource"]]


def test_lambda_authorizer_user_token(creds):
    from ig3_functions.authorizer.handler import handler

    for header in ({"Authorization": f"Bearer {creds['wallet']}"}, {"authorization": f"bearer {creds['wallet']}"},
                   {"AUTHORIZATION": f"BEARER {creds['wallet']}"}):
        result = handler(_request_event(header), None)
        assert result["principalId"] == WALLET
        assert result["context"] == {"principal": WALLET, "principal_type": "wallet", "scopes": "*",
                                     "tier": "standard"}
        allowed = _allowed(result)
        base = "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/prod"
        assert f"{base}/GET/v1/tasks/*" in allowed and f"{base}/POST/v1/keys" in allowed
        assert not any("/v1/auth/" in a for a in allowed)  # "none" routes never go through the authorizer
        expected = {r for r in TOPOLOGY.routes if r.auth in ("user", "any")}
        assert len(allowed) == len(expected)
        assert all(v is not None and isinstance(v, (str, int, float, bool)) for v in result["context"].values())


def test_lambda_authorizer_device_token_gets_only_device_routes(creds):
    from ig3_functions.authorizer.handler import handler

    result = handler(_request_event({"Authorization": f"Bearer {creds['device']}"}), None)
    allowed = _allowed(result)
    base = "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/prod"
    assert f"{base}/GET/v1/tasks/*" not in allowed and f"{base}/POST/v1/keys" not in allowed
    device_or_any = [r for r in TOPOLOGY.routes if r.auth in ("device", "any")]
    assert len(allowed) == len(device_or_any)
    assert result["context"]["principal_type"] == "device"


def test_lambda_authorizer_api_key_context(creds):
    from ig3_functions.authorizer.handler import handler

    result = handler(_request_event({"Authorization": f"Bearer {creds['apikey']}"}), None)
    assert result["principalId"] == WALLET
    assert result["context"] == {"principal": WALLET, "principal_type": "apikey", "scopes": "llm",
                                 "tier": "standard", "key_id": creds["key_id"], "rpm_limit": "10"}


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": ""}, {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiIweDEifQ."}, {"Authorization": "Bearer ig3_sk_x"},
])
def test_lambda_authorizer_rejects_with_apigateway_401(creds, headers):
    from ig3_functions.authorizer.handler import handler

    with pytest.raises(Exception, match="^Unauthorized$"):
        handler(_request_event(headers), None)


def test_context_round_trips_into_current_principal(creds):
    """The authorizer's context, as API Gateway hands it to the api function, gives the same Principal."""
    from types import SimpleNamespace

    from ig3.api.http import current_principal
    from ig3_functions.authorizer.handler import handler

    result = handler(_request_event({"Authorization": f"Bearer {creds['apikey']}"}), None)
    fake_resolver = SimpleNamespace(current_event=SimpleNamespace(request_context=SimpleNamespace(
        authorizer={**result["context"], "principalId": result["principalId"]})))
    p = current_principal(fake_resolver)
    assert p == ig3.identity.authorize(creds["apikey"], "user")


def test_authorizer_path_never_imports_web3_or_eth_account():
    import subprocess
    import sys

    code = ("import sys, ig3.identity, ig3.identity.authorizer, ig3.identity.service, ig3_functions.authorizer.handler;"
            "bad = [m for m in ('web3', 'eth_account', 'eth_utils', 'litellm') if m in sys.modules];"
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
