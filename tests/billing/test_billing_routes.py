"""Billing routes through the api function with API Gateway REST proxy events (moto server)."""

from __future__ import annotations

import csv
import io
import json
import uuid

import orjson
import pytest
from ig3.api.http import Principal
from ig3.billing.rewards import DeviceReward
from ig3.local.front import principal_context, proxy_event
from ig3.local.lambda_runtime import LambdaContext
from ig3.topology import TOPOLOGY

pytestmark = pytest.mark.integration


def call(method, path, *, principal=None, query="", params=None):
    from ig3_functions.api.handler import handler

    route = next(
        r
        for r in TOPOLOGY.routes
        if r.method == method
        and (r.path == path or (params and r.path.replace("{device}", params.get("device", "")) == path))
    )
    event = proxy_event(
        route=route,
        method=method,
        path=path,
        params=params or {},
        headers=[(b"host", b"api")],
        query=query,
        body=b"",
        client=None,
        authorizer=principal_context(principal) if principal else None,
    )
    resp = handler(event, LambdaContext(function_name="api", aws_request_id=uuid.uuid4().hex))
    headers = dict(resp.get("headers") or {})
    headers.update({k: v[-1] for k, v in (resp.get("multiValueHeaders") or {}).items() if v})
    return resp["statusCode"], headers, resp["body"]


@pytest.fixture
def funded(aws_env):
    from ig3.billing.wiring import billing_service

    billing_service.cache_clear()
    svc = billing_service()
    wallet = "0x" + uuid.uuid4().hex[:32]
    svc.credit(wallet, 5_000_000, f"dep-{wallet}")
    for i in range(5):
        svc.settle(
            f"{wallet}-q{i}",
            1000 + i,
            account=wallet,
            details={
                "model": "smollm2-135m-instruct" if i % 2 else "llama-3.2-1b-instruct",
                "route": "edge",
                "usage_kind": "chat",
                "device": "m1-x",
                "prompt_tokens": 10 + i,
                "completion_tokens": 20,
            },
        )
    svc.hold(wallet, f"{wallet}-open", 700, 300)
    return svc, wallet


def user(wallet):
    return Principal(subject=wallet.upper().replace("0X", "0x"), kind="wallet", scopes=frozenset({"*"}))


def test_balance_for_the_calling_principal(funded):
    svc, wallet = funded
    status, _, body = call("GET", "/v1/billing/balance", principal=user(wallet))
    assert status == 200
    spent = sum(1000 + i for i in range(5))
    assert json.loads(body) == {
        "account": wallet,
        "total": 5_000_000 - spent,
        "held": 700,
        "available": 5_000_000 - spent - 700,
        "unit": "micro-credit",
    }
    status, _, body = call("GET", "/v1/billing/balance")
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"


def test_usage_pages_with_a_cursor_filters_and_exports_csv(funded):
    svc, wallet = funded
    seen, cursor = [], None
    for _ in range(10):
        status, _, body = call(
            "GET",
            "/v1/billing/usage",
            principal=user(wallet),
            query="limit=2" + (f"&cursor={cursor}" if cursor else ""),
        )
        assert status == 200
        doc = json.loads(body)
        seen += doc["entries"]
        cursor = doc["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 6 and [e["kind"] for e in seen].count("deposit") == 1  # 5 charges + the deposit
    assert seen[0]["time"] >= seen[-1]["time"]  # newest first
    status, _, body = call(
        "GET", "/v1/billing/usage", principal=user(wallet), query="model=smollm2-135m-instruct"
    )
    assert sorted(e["amount"] for e in json.loads(body)["entries"]) == [-1003, -1001]
    status, headers, body = call(
        "GET", "/v1/billing/usage", principal=user(wallet), query="format=csv&limit=4"
    )
    assert status == 200 and headers["Content-Type"].startswith("text/csv") and headers.get("X-Next-Cursor")
    rows = list(csv.DictReader(io.StringIO(body)))
    assert len(rows) == 4 and rows[0]["device"] == "m1-x" and int(rows[0]["amount"]) < 0
    status, _, body = call(
        "GET",
        "/v1/billing/usage",
        principal=user(wallet),
        query=f"format=csv&cursor={headers['X-Next-Cursor']}",
    )
    assert len(list(csv.DictReader(io.StringIO(body)))) == 2
    # Time filters: everything is "now", so a window in the past is empty.
    status, _, body = call(
        "GET", "/v1/billing/usage", principal=user(wallet), query="until=2020-01-01T00:00:00Z"
    )
    assert status == 200 and json.loads(body)["entries"] == []


@pytest.mark.parametrize(
    "query, fragment",
    [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("format=xml", "format"),
        ("cursor=%%%", "cursor"),
        ("cursor=bm90LWEta2V5", "cursor"),
        ("since=yesterday", "since"),
        ("since=200&until=100", "before"),
    ],
)
def test_usage_bad_parameters_are_400_with_the_error_shape(funded, query, fragment):
    _, wallet = funded
    status, _, body = call("GET", "/v1/billing/usage", principal=user(wallet), query=query)
    err = json.loads(body)["error"]
    assert status == 400 and set(err) == {"type", "message", "code"} and fragment in err["message"]


def test_rewards_only_for_the_owner_or_the_device_itself(aws_env):
    import boto3
    from ig3.billing.rewards_store import DynamoRewardsStore

    owner = "0x" + uuid.uuid4().hex[:32]
    device = "m1-" + uuid.uuid4().hex[:8]
    boto3.client("dynamodb").put_item(
        TableName=aws_env["IG3_TABLE_DEVICES"],
        Item={
            "device_id": {"S": device},
            "owner": {"S": owner},
            "doc": {"S": orjson.dumps({"device_id": device, "owner": owner}).decode()},
        },
    )
    store = DynamoRewardsStore.from_env()
    for epoch in (3, 4):
        assert store.put(
            DeviceReward(
                device,
                epoch,
                owner,
                "eu",
                2333 * 10**6,
                epoch * 10**6,
                2333 * 10**6 + epoch * 10**6,
                {"uptime_ratio": "1"},
            )
        )
    params = {"device": device}
    status, _, body = call("GET", f"/v1/rewards/{device}", principal=user(owner), params=params)
    doc = json.loads(body)
    assert status == 200 and [r["epoch"] for r in doc["rewards"]] == [4, 3]
    assert doc["rewards"][0]["total"] == "2337" and doc["rewards"][0]["base"] == "2333"
    assert doc["current_epoch"]["start"].startswith("20")
    status, _, body = call(
        "GET", f"/v1/rewards/{device}", principal=user(owner), params=params, query="epoch=3"
    )
    assert [r["epoch"] for r in json.loads(body)["rewards"]] == [3]
    status, _, body = call(
        "GET", f"/v1/rewards/{device}", params=params, principal=Principal(subject=device, kind="device")
    )
    assert status == 200
    stranger = "0x" + uuid.uuid4().hex[:32]
    status, _, body = call("GET", f"/v1/rewards/{device}", principal=user(stranger), params=params)
    assert status == 404 and json.loads(body)["error"]["code"] == "device_not_found"
    status, _, _ = call("GET", "/v1/rewards/nope", principal=user(owner), params={"device": "nope"})
    assert status == 404
