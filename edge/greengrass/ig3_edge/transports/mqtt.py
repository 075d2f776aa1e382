"""Plain MQTT transport (paho-mqtt 2.x; MQTT 3.1.1 or 5): the local cloud and non-Greengrass hosts.

Design decisions:
- paho's network thread (``loop_start``) owns the socket; it reconnects by itself with
  exponential backoff (``reconnect_delay_set``: min..max seconds, doubling), also when the
  first connect fails, so the agent can start before the broker.
- Clean sessions; every subscription lives in our table and is re-sent in ``on_connect`` after
  each (re)connect. A task published while the device was offline is not replayed by the broker:
  the cloud's assignment timeout re-queues it (the protocol is at-least-once end to end).
- QoS 1 publishes made while disconnected stay in paho's outgoing queue (bounded by
  ``max_queued``) and go out after the reconnect; ``flush`` waits for their PUBACKs.
- ``mqtt://`` is TCP, ``mqtts://`` is TLS with the system CAs; user:password in the URL are used.
- TCP_NODELAY on the socket: stream chunks are small writes every few ms; with Nagle on they
  queue behind the broker's delayed ACKs (tens of ms). Brokers should set it too (Mosquitto:
  ``set_tcp_nodelay true``).
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import unquote, urlparse

from ig3_edge.transports.base import MessageHandler, TransportError

log = logging.getLogger("ig3_edge.mqtt")


class MqttTransport:
    name = "mqtt"

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        protocol: int = 4,
        keepalive: int = 30,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        max_queued: int = 10_000,
        max_inflight: int = 100,
    ):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        u = urlparse(url)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"unsupported MQTT URL scheme: {u.scheme!r}")
        self.host = u.hostname or "127.0.0.1"
        tls = u.scheme in ("mqtts", "ssl")
        self.port = u.port or (8883 if tls else 1883)
        self.keepalive = keepalive
        self.protocol = protocol
        self._mqtt = mqtt
        proto = mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311
        kwargs: dict[str, Any] = {"callback_api_version": CallbackAPIVersion.VERSION2, "client_id": client_id,
                                  "protocol": proto}
        if proto != mqtt.MQTTv5:
            kwargs["clean_session"] = True
        self._client = mqtt.Client(**kwargs)
        if u.username:
            self._client.username_pw_set(unquote(u.username), unquote(u.password or "") or None)
        if tls:
            self._client.tls_set()
        # paho's annotation says int, but it stores and doubles the values as given: floats work.
        self._client.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)  # type: ignore[arg-type]
        self._client.max_queued_messages_set(max_queued)
        self._client.max_inflight_messages_set(max_inflight)
        self._client.on_socket_open = _no_delay
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._lock = threading.Lock()
        self._handlers: dict[str, tuple[MessageHandler, int]] = {}
        self._acks: dict[int, threading.Event] = {}
        self._pending: deque[Any] = deque()  # MQTTMessageInfo of QoS 1 publishes not yet acknowledged
        self._connected = threading.Event()
        self._subscribed = threading.Event()  # all table entries acknowledged since the last connect
        self._started = False
        self._ever_connected = False
        self.reconnects = 0

    # -- lifecycle ----------------------------------------------------------------------
    def connect(self, timeout: float = 30.0) -> None:
        if not self._started:
            self._client.connect_async(self.host, self.port, keepalive=self.keepalive)
            self._client.loop_start()
            self._started = True
        if not self._connected.wait(timeout):
            raise TransportError(f"no MQTT connection to {self.host}:{self.port} within {timeout} s")

    def close(self) -> None:
        if self._started:
            self._started = False  # before disconnect: on_disconnect then knows it was asked for
            self._client.disconnect()
            self._client.loop_stop()
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- paho callbacks (network thread) ---------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("MQTT connect refused: %s", reason_code)
            return
        with self._lock:
            subs = [(topic, qos) for topic, (_h, qos) in self._handlers.items()]
        if subs:
            self._send_subscribe(subs)
        if self._ever_connected:
            self.reconnects += 1
            log.info("MQTT reconnected (%d); re-subscribed %d topics", self.reconnects, len(subs))
        self._ever_connected = True
        self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected.clear()
        if self._started:
            log.warning("MQTT disconnected (%s); paho reconnects with backoff", reason_code)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        with self._lock:
            ev = self._acks.pop(mid, None)
        failed = [rc for rc in reason_codes if getattr(rc, "is_failure", False)]
        if failed:
            log.error("MQTT subscribe refused: %s", failed)
        if ev is not None and not failed:
            ev.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        entry = self._handlers.get(msg.topic)
        if entry is None:
            with self._lock:
                for topic, e in self._handlers.items():
                    if self._mqtt.topic_matches_sub(topic, msg.topic):
                        entry = e
                        break
        if entry is None:
            return
        try:
            entry[0](msg.topic, msg.payload)
        except Exception:  # a handler bug must never kill paho's network thread
            log.exception("message handler failed for a message on %s", msg.topic)

    # -- operations -------------------------------------------------------------------------
    def _send_subscribe(self, subs: list[tuple[str, int]]) -> threading.Event:
        ev = threading.Event()
        with self._lock:
            rc, mid = self._client.subscribe(subs)
            if rc == self._mqtt.MQTT_ERR_SUCCESS and mid is not None:
                self._acks[mid] = ev
        return ev

    def subscribe(self, topic: str, handler: MessageHandler, qos: int = 1, timeout: float = 10.0) -> None:
        with self._lock:
            self._handlers[topic] = (handler, qos)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._connected.wait(max(0.0, deadline - time.monotonic())):
                break
            ev = self._send_subscribe([(topic, qos)])
            if ev.wait(max(0.05, min(2.0, deadline - time.monotonic()))):
                return
        raise TransportError(f"subscribe to {topic} not acknowledged within {timeout} s")

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            self._handlers.pop(topic, None)
        self._client.unsubscribe(topic)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self._client.publish(topic, payload, qos=qos)
        if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:
            raise TransportError("MQTT outgoing queue is full")
        if qos > 0:
            with self._lock:
                self._pending.append(info)
                while self._pending and _done(self._pending[0]):
                    self._pending.popleft()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every QoS 1 publish so far is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            waiting = list(self._pending)
        for info in waiting:
            while not _done(info):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.005)
        with self._lock:
            while self._pending and _done(self._pending[0]):
                self._pending.popleft()
        return True


def _no_delay(client: Any, userdata: Any, sock: Any) -> None:
    """Disable Nagle's algorithm: paho leaves it on, and a token chunk written while the previous
    one is unacknowledged would otherwise wait for the peer's (delayed, up to 40 ms) ACK."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (websockets/unix): nothing to tune
        pass


def _done(info: Any) -> bool:
    """Acknowledged, or never queued. paho keeps ``rc=NO_CONN`` on a message it queued while
    offline and later delivers, and ``is_published()`` raises on that rc, so read the flag."""
    from paho.mqtt.client import MQTT_ERR_QUEUE_SIZE

    return bool(getattr(info, "_published", False)) or info.rc == MQTT_ERR_QUEUE_SIZE
