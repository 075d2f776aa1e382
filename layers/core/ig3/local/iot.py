"""IoT Core stand-in: the data-plane Publish API and topic rules, over any MQTT broker.

- An HTTP endpoint that speaks boto3's ``iot-data`` ``Publish`` (``POST /topics/{topic}?qos=N``)
  and republishes to the broker, so handlers keep calling boto3 unchanged
  (``AWS_ENDPOINT_URL_IOT_DATA_PLANE`` — boto3's variable for the "IoT Data Plane" service — points at it).
- Topic rules: ``SELECT *, topic(4) AS thing FROM '<filter>'`` with an SQS action — the payload
  object, with ``thing`` set from the topic, is sent to the rule's queue (batched sends).
"""
from __future__ import annotations

import json
import queue
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import paho.mqtt.client as mqtt

from ig3.observability import logger
from ig3.topology import IotRule
from ig3.wire import MAX_MESSAGE_BYTES


def parse_mqtt_url(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("mqtt", "tcp"):
        raise ValueError(f"unsupported MQTT URL {url!r} (use mqtt://host:port)")
    return parsed.hostname or "127.0.0.1", parsed.port or 1883


def mqtt_client(url: str, name: str) -> mqtt.Client:
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"ig3-{name}-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    host, port = parse_mqtt_url(url)
    client.connect(host, port, keepalive=30)
    return client


def topic_matches(filter_: str, topic: str) -> bool:
    return mqtt.topic_matches_sub(filter_, topic)


def rule_payload(rule: IotRule, topic: str, payload: bytes) -> str | None:
    """The rule's SELECT: the JSON object plus ``thing`` from the topic; None if not a JSON object."""
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    levels = topic.split("/")
    if len(levels) >= rule.thing_level:
        body["thing"] = levels[rule.thing_level - 1]
    return json.dumps(body, separators=(",", ":"))


class IotDataEndpoint:
    """``iot-data`` Publish over HTTP -> MQTT broker."""

    def __init__(self, mqtt_url: str, host: str = "127.0.0.1", port: int = 0):
        self._client = mqtt_client(mqtt_url, "iot-data")
        self._client.loop_start()
        bridge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                parsed = urllib.parse.urlparse(self.path)
                length = int(self.headers.get("content-length") or 0)
                payload = self.rfile.read(length) if length else b""
                if not parsed.path.startswith("/topics/"):
                    return self._reply(404, {"message": "not found"})
                topic = urllib.parse.unquote(parsed.path[len("/topics/"):])
                qos = int(urllib.parse.parse_qs(parsed.query).get("qos", ["0"])[0])
                if len(payload) > MAX_MESSAGE_BYTES:
                    return self._reply(413, {"message": "payload exceeds 128 KB"})
                if not topic or "+" in topic or "#" in topic or qos not in (0, 1):
                    return self._reply(400, {"message": "invalid topic or qos"})
                info = bridge._client.publish(topic, payload, qos=qos)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    return self._reply(503, {"message": "broker unavailable"})
                self._reply(200, {})

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="iot-data", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.loop_stop()
        self._client.disconnect()


class TopicRules:
    """Subscribes to each rule's filter and delivers matching messages to its SQS queue."""

    def __init__(self, mqtt_url: str, rules: list[IotRule], queue_urls: dict[str, str], sqs: Any):
        self._rules, self._urls, self._sqs = rules, queue_urls, sqs
        self._outbox: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self.delivered = 0
        self.dropped = 0
        self._sender = threading.Thread(target=self._send_loop, name="iot-rules-sqs", daemon=True)
        self._sender.start()
        self._client = mqtt_client(mqtt_url, "iot-rules")
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        for rule in self._rules:  # (re)subscribe after every (re)connect
            client.subscribe(rule.topic_filter, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        for rule in self._rules:
            if topic_matches(rule.topic_filter, msg.topic):
                body = rule_payload(rule, msg.topic, msg.payload)
                if body is None:
                    self.dropped += 1  # IoT Core drops non-JSON payloads for SELECT * rules too
                    continue
                self._outbox.put((rule.target_queue, body))

    def _send_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            batch: dict[str, list[str]] = {item[0]: [item[1]]}
            while sum(map(len, batch.values())) < 50:
                try:
                    nxt = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._outbox.put(None)
                    break
                batch.setdefault(nxt[0], []).append(nxt[1])
            for target, bodies in batch.items():
                for i in range(0, len(bodies), 10):
                    chunk = bodies[i : i + 10]
                    try:
                        resp = self._sqs.send_message_batch(QueueUrl=self._urls[target], Entries=[
                            {"Id": str(n), "MessageBody": b} for n, b in enumerate(chunk)])
                        self.delivered += len(resp.get("Successful", []))
                        self.dropped += len(resp.get("Failed", []))
                    except Exception:  # noqa: BLE001
                        self.dropped += len(chunk)
                        logger.exception("topic rule delivery failed", extra={"queue": target})

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
        self._outbox.put(None)
        self._sender.join(timeout=5)
