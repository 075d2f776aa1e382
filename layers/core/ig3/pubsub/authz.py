"""Who may subscribe to what: the topic rule for clients, and the IoT Core custom authorizer's policy.

Clients (users, agents, dashboards) subscribe with the same credentials as the HTTP API (a JWT
or an API key) to:
- ``ig3/v1/network/summary`` (and anything under ``ig3/v1/network/``): the aggregated network
  summary, public to every authenticated caller — it carries no account, prompt or output;
- ``ig3/v1/tasks/{task}/stream``: the chunks of one of *their own* tasks (a device publishes them).

Clients never publish, and never see device topics (``ig3/v1/devices/...``: tasks, results,
heartbeats). In AWS, MQTT-over-WebSocket connections go through an IoT Core *custom authorizer*
(``functions/pubsub/authorizer.py``): it checks the token with ``ig3.identity.authorize``, checks
that the caller owns each task it names, and returns a policy allowing exactly those topics. A
policy is fixed at connect time, so the client names its tasks when it connects (MQTT username
``tasks=<id>,<id>`` or the WebSocket query parameter ``tasks``) and reconnects to follow a new
task; ``refreshAfterInSeconds`` bounds how long a revoked key keeps a connection.
Pure logic: no AWS imports.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

NETWORK_PREFIX = "ig3/v1/network/"
NETWORK_SUMMARY_TOPIC = NETWORK_PREFIX + "summary"
TASK_STREAM_TOPIC = "ig3/v1/tasks/{task}/stream"
# Task ids are UUIDs or similar: anything else cannot name a topic level safely (no wildcards,
# no separators, no policy-variable syntax).
TASK_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TASKS_PER_CONNECTION = 20  # keeps the policy document far below IoT Core's 2 KB per statement limits
REFRESH_AFTER_S = 300  # re-authorize (revoked keys, expired tokens) at least this often
MAX_CONNECTION_S = 86400


def task_stream_topic(task_id: str) -> str:
    return TASK_STREAM_TOPIC.format(task=task_id)


def may_subscribe(topic_filter: str, own_tasks: Iterable[str]) -> bool:
    """The client-side rule, used by the local broker bridge and mirrored by the IoT policy."""
    if topic_filter.startswith(NETWORK_PREFIX):
        return True
    parts = topic_filter.split("/")
    if len(parts) == 5 and parts[:3] == ["ig3", "v1", "tasks"] and parts[4] == "stream":
        return TASK_ID_RE.match(parts[3]) is not None and parts[3] in set(own_tasks)
    return False


def parse_requested_tasks(raw: str | None) -> list[str]:
    """``tasks=a,b`` / ``a,b`` -> ["a", "b"]; raises ValueError on a malformed or oversized list."""
    if not raw:
        return []
    raw = raw.strip()
    if raw.startswith("tasks="):
        raw = raw[len("tasks="):]
    ids = [t for t in (s.strip() for s in raw.split(",")) if t]
    if len(ids) > MAX_TASKS_PER_CONNECTION:
        raise ValueError(f"at most {MAX_TASKS_PER_CONNECTION} tasks per connection")
    for t in ids:
        if not TASK_ID_RE.match(t):
            raise ValueError("malformed task id")
    return list(dict.fromkeys(ids))


def credentials_from_request(event: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(token, requested tasks, client id) from an IoT Core custom authorizer request.

    MQTT: username = ``tasks=...`` (optional), password = the token (base64 in the request).
    MQTT over WebSocket from a browser: query string ``token=...&tasks=...``, or the token in
    the ``token`` field when the authorizer's token key is used.
    """
    data = event.get("protocolData") or {}
    mqtt = data.get("mqtt") or {}
    http = data.get("http") or {}
    token = tasks = None
    if mqtt.get("password"):
        try:
            token = base64.b64decode(mqtt["password"], validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            token = None
        tasks = mqtt.get("username")
    query = parse_qs(http.get("queryString") or "")
    token = token or (query.get("token") or [None])[-1] or event.get("token")
    tasks = tasks or (query.get("tasks") or [None])[-1]
    return token, tasks, mqtt.get("clientId")


def principal_id(subject: str) -> str:
    """IoT Core wants 1-128 alphanumerics: a stable digest of the subject (never the token)."""
    return "u" + hashlib.sha256(subject.encode()).hexdigest()[:40]


def iot_policy(*, region: str, account: str, client_id: str | None, tasks: Iterable[str]) -> dict[str, Any]:
    """The IAM-style policy: connect as this client id, subscribe/receive the network topics and
    the listed task streams, nothing else (no publish, no device topics).

    IoT policy resources: ``topicfilter/...`` for Subscribe (matched literally against the filter the
    client sends, ``*`` being the policy wildcard), ``topic/...`` for Receive.
    """
    arn = f"arn:aws:iot:{region}:{account}"
    tasks = list(tasks)
    filters = [f"{arn}:topicfilter/{NETWORK_PREFIX}*"] + [f"{arn}:topicfilter/{task_stream_topic(t)}" for t in tasks]
    topics = [f"{arn}:topic/{NETWORK_PREFIX}*"] + [f"{arn}:topic/{task_stream_topic(t)}" for t in tasks]
    connect = f"{arn}:client/{client_id}" if client_id else f"{arn}:client/*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": connect},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": filters},
            {"Effect": "Allow", "Action": "iot:Receive", "Resource": topics},
        ],
    }


def authorize_subscription(event: dict[str, Any], *, authorize: Callable[[str | None, str], Any],
                           task_owner: Callable[[str], str | None], region: str, account: str) -> dict[str, Any]:
    """The custom authorizer's answer for one connection request.

    ``authorize``: ``ig3.identity.authorize`` (raises on a bad token); ``task_owner``: the
    account that owns a task (None: no such task). A bad token, a malformed task list or a task
    the caller does not own -> ``isAuthenticated: false`` (IoT Core refuses the connection) —
    naming someone else's task is refused outright rather than silently dropped, so a client
    never waits on a topic it can never receive.
    """
    denied = {"isAuthenticated": False}
    token, raw_tasks, client_id = credentials_from_request(event)
    if not token:
        return denied
    try:
        principal = authorize(token, "user")
        tasks = parse_requested_tasks(raw_tasks)
    except Exception:  # noqa: BLE001 — Unauthorized/Forbidden/ValueError: refuse the connection
        return denied
    subject = getattr(principal, "subject", None)
    if not subject:
        return denied
    for t in tasks:  # tasks belong to the caller's subject (its wallet for an API key), as in the API
        if task_owner(t) != subject:
            return denied
    policy = iot_policy(region=region, account=account, client_id=client_id, tasks=tasks)
    return {
        "isAuthenticated": True,
        "principalId": principal_id(subject),
        "disconnectAfterInSeconds": MAX_CONNECTION_S,
        "refreshAfterInSeconds": REFRESH_AFTER_S,
        "policyDocuments": [json.dumps(policy, separators=(",", ":"))],
    }
