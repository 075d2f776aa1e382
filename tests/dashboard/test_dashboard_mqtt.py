"""The dashboard on its MQTT-over-WebSocket transport (what it uses in AWS, against IoT Core), in Chromium.

A real MQTT broker (amqtt) with a TCP and a WebSocket listener; the network summary (built by
``ig3.pubsub.summary.build_summary`` for 40 devices in 4 regions, one recently offline, a task feed)
is published on ``ig3/v1/network/summary`` over TCP the way the pubsub function publishes it through
IoT Core; the page, served as plain static files with a ``config.json`` that selects MQTT, subscribes
over WebSocket with its own MQTT client (``mqtt.js``) and must render the fleet. The broker here does
no authorization (the custom authorizer's policy is tested in tests/pubsub/test_authz.py).
"""
from __future__ import annotations

import asyncio
import functools
import http.server
import json
import os
import subprocess
import threading
import time

import orjson
import paho.mqtt.client as mqtt
import pytest

from ig3.pubsub.authz import NETWORK_SUMMARY_TOPIC
from ig3.pubsub.local_front import DASHBOARD_DIR
from ig3.pubsub.summary import build_summary
from tests.conftest import free_port
from tests.dashboard.test_dashboard_browser import ARTIFACTS, HERE, _ensure_chromium, _ensure_playwright

pytestmark = pytest.mark.timeout(120)
REGIONS = {"eu-central-1": (50.1, 8.7), "us-east-1": (40.7, -74.0), "ap-southeast-1": (1.35, 103.8),
           "sa-east-1": (-23.5, -46.6)}


class Broker:
    def __init__(self, tcp_port: int, ws_port: int):
        self.tcp_port, self.ws_port = tcp_port, ws_port
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from amqtt.broker import Broker as AmqttBroker

        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.tcp_port}"},
                                "ws": {"type": "ws", "bind": f"127.0.0.1:{self.ws_port}"}},
                  "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
        self._broker = AmqttBroker(config, loop=self._loop)
        self._loop.run_until_complete(self._broker.start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._broker.shutdown())

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "broker did not start"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def static_server(port: int, config: dict) -> http.server.ThreadingHTTPServer:
    """The dashboard as S3 + CloudFront would serve it: the same files, a deployment's config.json."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path.split("?")[0] == "/config.json":
                body = json.dumps(config).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port),
                                             functools.partial(Handler, directory=str(DASHBOARD_DIR)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_dashboard_over_mqtt_websocket(tmp_path):
    chromium = _ensure_chromium()
    _ensure_playwright()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    broker = Broker(free_port(), free_port())
    broker.start()
    web = static_server(free_port(), {"transport": "mqtt", "url": f"ws://127.0.0.1:{broker.ws_port}/"})
    now = time.time()
    devices = []
    for i in range(40):
        region = list(REGIONS)[i % 4]
        lat, lon = REGIONS[region]
        devices.append({"thing": f"m1-{i:03d}", "region": region, "lat": lat + i * 0.05, "lon": lon, "capacity": 4,
                        "in_flight": i % 5, "models": ["smollm2-135m-instruct"], "status": "online"})
    feed = [{"type": "TaskCompleted", "ts": now - 1, "task_id": "tsk_mqtt1", "status": "COMPLETED", "model": "smollm2",
             "route": "edge", "device": "m1-001", "latency_ms": 812},
            {"type": "TaskAssigned", "ts": now - 2, "task_id": "tsk_mqtt2", "status": "ASSIGNED", "model": "smollm2",
             "route": "cloud", "device": "cloud:ig3-fallback", "why": "no device fits"}]
    summary = build_summary(now=now, devices=devices, offline=[("m1-gone", now - 5)], buckets={}, totals={},
                            feed=feed)
    # The device that went offline was seen before: the page learns where it was from an earlier summary.
    earlier = build_summary(now=now - 3, devices=devices + [{**devices[0], "thing": "m1-gone"}], buckets={},
                            totals={}, feed=[])
    stop = threading.Event()
    pub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="test-publisher")
    pub.connect("127.0.0.1", broker.tcp_port)
    pub.loop_start()

    seen_earlier = threading.Event()

    def publish_loop():
        while not stop.wait(0.3):  # once a second in production; faster here
            body = summary if seen_earlier.is_set() else earlier
            pub.publish(NETWORK_SUMMARY_TOPIC, orjson.dumps(body), qos=1)

    threading.Thread(target=publish_loop, daemon=True).start()
    try:
        env = {**os.environ, "PAGE_URL": f"http://127.0.0.1:{web.server_port}/index.html", "TOKEN": "ig3_sk_example",
               "EXPECT_DEVICES": "40", "EXPECT_OFFLINE": "m1-gone", "ARTIFACTS": str(ARTIFACTS), "CHROMIUM": chromium}
        proc = subprocess.Popen(["node", str(HERE / "drive_mqtt.mjs")], cwd=HERE, env=env, stdout=subprocess.PIPE,
                                stderr=open(tmp_path / "drive.log", "wb"), text=True)  # noqa: SIM115
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(json.loads(line))
            if "seen" in lines[-1]:
                seen_earlier.set()
        assert proc.wait(timeout=30) == 0, (tmp_path / "drive.log").read_text()[-3000:]
        shown = lines[-1]["feed"]
        assert ["tsk_mqtt1", "edge"] in shown and ["tsk_mqtt2", "cloud"] in shown
    finally:
        stop.set()
        pub.loop_stop()
        pub.disconnect()
        web.shutdown()
        broker.stop()
