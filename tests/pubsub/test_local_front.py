"""The local front's SSE endpoints as an ASGI app, bridged from a real MQTT broker (Mosquitto).

The credential check and the task store are injected (in-memory fakes of our ports); the broker,
the MQTT client, the fan-out and the SSE framing are real. Topics are unique per test.
"""
from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import paho.mqtt.client as mqtt
import pytest

from ig3.errors import Unauthorized
from ig3.pubsub.authz import task_stream_topic
from ig3.pubsub.local_front import LocalPubSubFront, MqttFanout
from ig3.tasks.model import Task, TaskStatus
from ig3.wire import TaskInput

OWNER = "0x" + "a1" * 20


class Principal:
    def __init__(self, subject: str):
        self.subject = subject


def authorize(token, route):
    if token == "key-owner":
        return Principal(OWNER)
    if token == "key-other":
        return Principal("0x" + "b2" * 20)
    raise Unauthorized("invalid token", code="invalid_token")


def make_task(task_id: str, status: TaskStatus = TaskStatus.ASSIGNED, **kw) -> Task:
    now = time.time()
    return Task(task_id=task_id, kind="completion", model="m1", input=TaskInput(prompt="secret prompt"),
                account=OWNER, status=status, created_at=now, updated_at=now, attempt=1, route="edge",
                device="dev-a", **kw)


@pytest.fixture
def fanout(mqtt_url):
    f = MqttFanout(mqtt_url, summary_topic=f"test/{uuid.uuid4().hex}/ig3/v1/network/summary")
    yield f
    f.stop()


@pytest.fixture
def publisher(mqtt_url):
    host, port = mqtt_url.split("://", 1)[1].rsplit(":", 1)
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
    c.connect(host, int(port))
    c.loop_start()
    yield c
    c.loop_stop()
    c.disconnect()


async def call(app, path, *, headers=(), query=b"", until=None, timeout=15.0, send_delay=0.0):
    """Run one request; returns (status, headers, body). ``until(body)`` -> disconnect the client."""
    sent: list[dict] = []
    gone = asyncio.Event()
    body = bytearray()

    async def receive():
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)
        if send_delay:
            await asyncio.sleep(send_delay)  # a slow viewer (a congested socket)
        if msg["type"] == "http.response.body":
            body.extend(msg.get("body", b""))
            if until is not None and until(bytes(body)):
                gone.set()

    scope = {"type": "http", "method": "GET", "path": path, "headers": list(headers), "query_string": query}
    await asyncio.wait_for(app(scope, receive, send), timeout)
    start = sent[0]
    return start["status"], dict(start["headers"]), bytes(body), sent


def events(body: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in body.decode().split("\n\n"):
        lines = [x for x in block.split("\n") if x and not x.startswith(":")]
        if lines:
            out.append((lines[0].removeprefix("event: "), orjson.loads(lines[1].removeprefix("data: "))))
    return out


def test_credentials_are_required(fanout):
    app = LocalPubSubFront(fanout, authorize, lambda t: None)
    status, headers, body, _ = asyncio.run(call(app, "/v1/events/stream"))
    assert status == 401 and orjson.loads(body)["error"]["code"] == "missing_token"
    status, _, body, _ = asyncio.run(call(app, "/v1/events/stream", headers=[(b"authorization", b"Bearer nope")]))
    assert status == 401 and orjson.loads(body)["error"]["code"] == "invalid_token"


def test_someone_elses_task_is_not_found(fanout):
    task_id = "tsk_" + uuid.uuid4().hex
    app = LocalPubSubFront(fanout, authorize, lambda t: make_task(t) if t == task_id else None)
    for tid in (task_id, "tsk_missing", "a+b"):
        status, _, body, _ = asyncio.run(call(app, f"/v1/tasks/{tid}/events",
                                              headers=[(b"authorization", b"Bearer key-other")]))
        assert status == 404 and orjson.loads(body)["error"]["code"] == "task_not_found"


def test_own_task_chunks_in_order_then_the_terminal_record(fanout, publisher):
    task_id = "tsk_" + uuid.uuid4().hex
    record = {"task": make_task(task_id)}
    app = LocalPubSubFront(fanout, authorize, lambda t: record["task"] if t == task_id else None)

    async def scenario():
        request = asyncio.ensure_future(call(app, f"/v1/tasks/{task_id}/events",
                                             headers=[(b"authorization", b"Bearer key-owner")]))
        await asyncio.sleep(1.0)  # subscribed by now
        for seq in range(5):
            publisher.publish(task_stream_topic(task_id), orjson.dumps({"task_id": task_id, "seq": seq}), qos=1)
        await asyncio.sleep(0.5)
        record["task"] = make_task(task_id, TaskStatus.COMPLETED)
        return await request

    status, headers, body, sent = asyncio.run(scenario())
    assert status == 200 and headers[b"content-type"].startswith(b"text/event-stream")
    got = events(body)
    assert got[0][0] == "task" and got[0][1]["status"] == "ASSIGNED"
    assert [e[1]["seq"] for e in got if e[0] == "chunk"] == [0, 1, 2, 3, 4]
    assert got[-1][0] == "task" and got[-1][1]["status"] == "COMPLETED"
    assert b"secret prompt" not in body and sent[-1].get("more_body") is False  # the stream ends


def test_network_summary_latest_first_and_slow_viewers_skip(fanout, publisher):
    app = LocalPubSubFront(fanout, authorize, lambda t: None)

    async def scenario():
        # A summary published before anyone watches is still what a new viewer gets first.
        publisher.publish(fanout.summary_topic, orjson.dumps({"n": 0}), qos=1)
        for _ in range(50):
            if fanout.latest_summary is not None:
                break
            await asyncio.sleep(0.1)
        request = asyncio.ensure_future(call(
            app, "/v1/events/stream", query=b"token=key-owner", send_delay=0.3,
            until=lambda b: b'{"n":29}' in b))
        await asyncio.sleep(0.5)
        for n in range(1, 30):  # a burst while the viewer is slow: its one-slot queue keeps the newest
            publisher.publish(fanout.summary_topic, orjson.dumps({"n": n}), qos=1)
        return await request

    status, _, body, _ = asyncio.run(scenario())
    got = [e[1]["n"] for e in events(body)]
    assert status == 200 and got[0] == 0 and got[-1] == 29 and got == sorted(got)
    assert len(got) <= 4  # the burst did not queue up behind the slow viewer: it skipped to the newest


def test_dashboard_files_and_no_escape(fanout):
    app = LocalPubSubFront(fanout, authorize, lambda t: None)
    status, headers, body, _ = asyncio.run(call(app, "/dashboard/"))
    assert status == 200 and b"<title>iG3 network</title>" in body
    assert b"default-src 'self'" in headers[b"content-security-policy"]
    status, headers, _, _ = asyncio.run(call(app, "/dashboard"))
    assert status == 308 and headers[b"location"] == b"/dashboard/"
    status, headers, body, _ = asyncio.run(call(app, "/dashboard/app.js"))
    assert status == 200 and headers[b"content-type"].split(b";")[0] in (b"text/javascript", b"application/javascript")
    for path in ("/dashboard/../local_front.py", "/dashboard/%2e%2e/authz.py", "/dashboard/nope.js"):
        status, _, body, _ = asyncio.run(call(app, path))
        assert status == 404, path
