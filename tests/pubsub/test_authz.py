"""Who may subscribe to what: the IoT Core custom authorizer function end to end (real API keys and
JWTs from the identity service on moto + Redis, real task records), and the topic rule itself."""
from __future__ import annotations

import base64
import json
import time
import uuid
from types import SimpleNamespace

import pytest

from ig3.pubsub.authz import (MAX_TASKS_PER_CONNECTION, authorize_subscription, may_subscribe,
                              parse_requested_tasks, principal_id)

WALLET_A = "0x" + "a1" * 20
WALLET_B = "0x" + "b2" * 20
CONTEXT = SimpleNamespace(invoked_function_arn="arn:aws:lambda:eu-central-1:123456789012:function:ig3-prod-pubsub-auth")


@pytest.fixture
def identity(aws_env, redis_url, redis_prefix, monkeypatch):
    import ig3.identity as identity_pkg
    from ig3.identity import service

    monkeypatch.setenv("IG3_PUBLIC_HOST", "127.0.0.1:8080")
    monkeypatch.setenv("IG3_JWT_SECRET_ID", f"ig3/test/jwt-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("IG3_IDENTITY_REDIS_PREFIX", redis_prefix)
    monkeypatch.setenv("REDIS_URL", redis_url)
    service.reset()
    identity_pkg._authorizer = None
    from ig3.identity.tokens import ensure_signing_secret

    ensure_signing_secret(__import__("os").environ["IG3_JWT_SECRET_ID"])
    yield service
    service.reset()
    identity_pkg._authorizer = None


def make_task(account: str) -> str:
    from ig3 import config
    from ig3.tasks.model import Task
    from ig3.tasks.store import DynamoTaskStore
    from ig3.wire import TaskInput

    task_id = str(uuid.uuid4())
    now = time.time()
    DynamoTaskStore(config.table_name("tasks")).create(
        Task(task_id=task_id, kind="completion", model="m1", input=TaskInput(prompt="hi"), account=account,
             created_at=now, updated_at=now))
    return task_id


def mqtt_request(token: str | None, tasks: str | None = None, client_id: str = "dash-1") -> dict:
    mqtt = {"clientId": client_id}
    if token is not None:
        mqtt["password"] = base64.b64encode(token.encode()).decode()
    if tasks is not None:
        mqtt["username"] = tasks
    return {"protocols": ["mqtt", "tls"], "protocolData": {"mqtt": mqtt, "tls": {"serverName": "x"}},
            "signatureVerified": False, "connectionMetadata": {"id": "c-1"}}


def handler(event):
    from ig3_functions.pubsub.authorizer import handler as fn

    return fn(event, CONTEXT)


def statements(out: dict) -> dict[str, list[str]]:
    policy = json.loads(out["policyDocuments"][0])
    result: dict[str, list[str]] = {}
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        res = st["Resource"]
        result[st["Action"]] = res if isinstance(res, list) else [res]
    return result


def test_api_key_owner_gets_its_task_stream_and_the_network(identity):
    key, _ = identity.api_key_service().create(WALLET_A, name="dash", scopes=["*"], caller_scopes=frozenset({"*"}))
    mine = make_task(WALLET_A)
    out = handler(mqtt_request(key, f"tasks={mine}"))
    assert out["isAuthenticated"] is True
    assert out["principalId"] == principal_id(WALLET_A) and key not in json.dumps(out)
    assert 0 < out["refreshAfterInSeconds"] <= 300
    st = statements(out)
    arn = "arn:aws:iot:eu-central-1:123456789012"
    assert st["iot:Connect"] == [f"{arn}:client/dash-1"]
    assert st["iot:Subscribe"] == [f"{arn}:topicfilter/ig3/v1/network/*", f"{arn}:topicfilter/ig3/v1/tasks/{mine}/stream"]
    assert st["iot:Receive"] == [f"{arn}:topic/ig3/v1/network/*", f"{arn}:topic/ig3/v1/tasks/{mine}/stream"]
    assert "iot:Publish" not in st  # clients never publish
    assert not any("devices" in r for rs in st.values() for r in rs)


def test_someone_elses_task_is_refused(identity):
    key, _ = identity.api_key_service().create(WALLET_A, name="dash", scopes=["*"], caller_scopes=frozenset({"*"}))
    theirs = make_task(WALLET_B)
    mine = make_task(WALLET_A)
    assert handler(mqtt_request(key, f"tasks={mine},{theirs}")) == {"isAuthenticated": False}
    assert handler(mqtt_request(key, f"tasks={uuid.uuid4()}")) == {"isAuthenticated": False}  # no such task


def test_jwt_over_websocket_query_string(identity):
    token, _ = identity.token_service().issue(WALLET_B, "wallet", ["*"], "standard")
    theirs = make_task(WALLET_B)
    event = {"protocols": ["http", "mqtt"], "protocolData": {"http": {
        "headers": {}, "queryString": f"x-amz-customauthorizer-name=ig3&token={token}&tasks={theirs}"}}}
    out = handler(event)
    assert out["isAuthenticated"] is True
    st = statements(out)
    assert any(r.endswith(f"tasks/{theirs}/stream") for r in st["iot:Subscribe"])
    assert st["iot:Connect"][0].endswith(":client/*")  # the WebSocket request names no client id


def test_bad_credentials_are_refused(identity):
    key, _ = identity.api_key_service().create(WALLET_A, name="dash", scopes=["*"], caller_scopes=frozenset({"*"}))
    assert handler(mqtt_request(None)) == {"isAuthenticated": False}
    assert handler(mqtt_request("ig3_sk_notakey")) == {"isAuthenticated": False}
    assert handler(mqtt_request(key[:-2] + "xx")) == {"isAuthenticated": False}
    assert handler(mqtt_request(key, "tasks=a/b")) == {"isAuthenticated": False}  # topic separator in an id
    assert handler(mqtt_request(key, "tasks=#")) == {"isAuthenticated": False}
    device_token, _ = identity.token_service().issue("did:peaq:0xdev", "device", ["device"], "standard")
    assert handler(mqtt_request(device_token)) == {"isAuthenticated": False}  # devices use their own topics
    bad_password = mqtt_request(key)
    bad_password["protocolData"]["mqtt"]["password"] = "%%%"
    assert handler(bad_password) == {"isAuthenticated": False}


def test_network_only_connection(identity):
    key, _ = identity.api_key_service().create(WALLET_A, name="dash", scopes=["*"], caller_scopes=frozenset({"*"}))
    st = statements(handler(mqtt_request(key)))
    assert len(st["iot:Subscribe"]) == 1 and st["iot:Subscribe"][0].endswith("topicfilter/ig3/v1/network/*")


def test_topic_rule():
    assert may_subscribe("ig3/v1/network/summary", [])
    assert may_subscribe("ig3/v1/network/#", [])
    assert may_subscribe("ig3/v1/tasks/t1/stream", ["t1"])
    assert not may_subscribe("ig3/v1/tasks/t2/stream", ["t1"])
    assert not may_subscribe("ig3/v1/tasks/+/stream", ["t1", "+"])
    assert not may_subscribe("ig3/v1/tasks/#", ["t1"])
    assert not may_subscribe("ig3/v1/devices/d1/heartbeat", ["t1"])
    assert not may_subscribe("#", ["t1"])


def test_requested_task_lists():
    assert parse_requested_tasks(None) == [] and parse_requested_tasks("") == []
    assert parse_requested_tasks("tasks=a,b,a") == ["a", "b"]
    with pytest.raises(ValueError):
        parse_requested_tasks(",".join(f"t{i}" for i in range(MAX_TASKS_PER_CONNECTION + 1)))
    with pytest.raises(ValueError):
        parse_requested_tasks("tasks=a+b")


def test_authorize_errors_never_leak(identity):
    def boom(token, route):
        raise RuntimeError("token store down")

    out = authorize_subscription(mqtt_request("x"), authorize=boom, task_owner=lambda t: None, region="r", account="1")
    assert out == {"isAuthenticated": False}
