"""Regressions for what ``make fuzz`` found, each replayed as the exact request that failed."""
from __future__ import annotations

import base64

import orjson
import pytest
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.event_handler.router import APIGatewayRouter
from pydantic import BaseModel

from ig3.api.app import build_resolver
from ig3.api.http import json_response, parse_body


class _Body(BaseModel):
    name: str


def _resolver() -> APIGatewayRestResolver:
    router = APIGatewayRouter()

    @router.post("/echo")
    def echo():
        return json_response(200, {"name": parse_body(router, _Body).name})

    return build_resolver([router])


def _event(body: str | None, *, b64: bool) -> dict:
    return {"resource": "/echo", "path": "/echo", "httpMethod": "POST", "headers": {}, "multiValueHeaders": {},
            "queryStringParameters": None, "pathParameters": None, "body": body, "isBase64Encoded": b64,
            "requestContext": {"resourcePath": "/echo", "httpMethod": "POST", "stage": "local", "requestId": "r"}}


@pytest.mark.parametrize("raw", [b"\xff\xfe", b'{"name": "\xc3"}', b"\x80"])
def test_body_that_is_not_utf8_is_a_400_not_a_500(raw):
    # The local front (like API Gateway with binary media types) passes such bytes base64-encoded.
    out = _resolver().resolve(_event(base64.b64encode(raw).decode(), b64=True), None)
    assert out["statusCode"] == 400
    assert orjson.loads(out["body"])["error"]["code"] == "invalid_json"


def test_utf8_body_still_parses():
    out = _resolver().resolve(_event(base64.b64encode(b'{"name": "caf\xc3\xa9"}').decode(), b64=True), None)
    assert out["statusCode"] == 200 and orjson.loads(out["body"]) == {"name": "café"}
