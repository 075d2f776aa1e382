"""Greengrass v2 IPC transport: IoT Core pub/sub through the nucleus (``aws.greengrass.ipc.mqttproxy``).

The production transport on a Greengrass core device: the nucleus holds the one MQTT
connection to IoT Core (its certificate, its reconnects, its offline spooler); the component
talks to it over the local IPC socket with ``GreengrassCoreIPCClientV2``. The recipe's
``accessControl`` must allow exactly the topics used here.

Design decisions:
- The client is injected as a factory (``client_factory``): on a device it is
  ``GreengrassCoreIPCClientV2()`` (which reads ``SVCUID`` and the socket path the nucleus
  sets); tests pass a stand-in with the same methods. A lost IPC connection is rebuilt through
  the same factory with exponential backoff.
- Publishes use ``publish_to_iot_core_async``: the token loop never waits for the nucleus's
  answer; ``flush`` waits for the outstanding futures. QoS 1 publishes that fail (IPC
  connection lost) are kept (bounded) and re-sent once the connection is back.
- A subscription stream that closes (error or nucleus restart) is re-opened with backoff.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

from ig3_edge.transports.base import MessageHandler, TransportError

log = logging.getLogger("ig3_edge.ipc")


def default_client_factory() -> Any:
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

    return GreengrassCoreIPCClientV2()


class GreengrassIpcTransport:
    name = "ipc"

    def __init__(self, client_factory: Callable[[], Any] | None = None, *, reconnect_min_s: float = 0.5,
                 reconnect_max_s: float = 30.0, max_retry: int = 10_000):
        from awsiot.greengrasscoreipc.model import QOS

        self._qos = {0: QOS.AT_MOST_ONCE, 1: QOS.AT_LEAST_ONCE}
        self._factory = client_factory or default_client_factory
        self._client: Any = None
        self._lock = threading.RLock()
        self._subs: dict[str, tuple[MessageHandler, int]] = {}
        self._ops: dict[str, Any] = {}
        self._pending: deque[Future] = deque()
        self._retry: deque[tuple[str, bytes, int]] = deque(maxlen=max_retry)
        self._min = reconnect_min_s
        self._max = reconnect_max_s
        self._closing = False
        self._healing = threading.Lock()
        self.reconnects = 0

    # -- lifecycle ----------------------------------------------------------------------
    def connect(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        delay = self._min
        while True:
            try:
                self._client = self._factory()
                return
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    raise TransportError(f"no Greengrass IPC connection: {exc}") from exc
                log.warning("IPC connect failed (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, self._max)

    @property
    def connected(self) -> bool:
        return self._client is not None

    def close(self) -> None:
        self._closing = True
        with self._lock:
            ops, self._ops = list(self._ops.values()), {}
        for op in ops:
            try:
                op.close()
            except Exception:  # already closed by the nucleus
                pass
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    # -- subscriptions ------------------------------------------------------------------------
    def subscribe(self, topic: str, handler: MessageHandler, qos: int = 1, timeout: float = 10.0) -> None:
        with self._lock:
            self._subs[topic] = (handler, qos)
        self._open_stream(topic)

    def _open_stream(self, topic: str) -> None:
        handler, qos = self._subs[topic]

        def on_event(event: Any) -> None:
            msg = event.message
            try:
                handler(msg.topic_name or topic, bytes(msg.payload or b""))
            except Exception:  # never let a handler error close the stream
                log.exception("message handler failed for a message on %s", topic)

        def on_error(exc: Exception) -> bool:
            log.warning("IPC stream error on %s: %s", topic, exc)
            return True  # close it; on_closed re-opens it

        def on_closed() -> None:
            with self._lock:
                self._ops.pop(topic, None)
                wanted = topic in self._subs and not self._closing
            if wanted:
                self._heal_later()

        _resp, op = self._client.subscribe_to_iot_core(topic_name=topic, qos=self._qos[qos],
                                                       on_stream_event=on_event, on_stream_error=on_error,
                                                       on_stream_closed=on_closed)
        with self._lock:
            self._ops[topic] = op

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            self._subs.pop(topic, None)
            op = self._ops.pop(topic, None)
        if op is not None:
            op.close()

    # -- self-healing ----------------------------------------------------------------------------
    def _heal_later(self) -> None:
        threading.Thread(target=self._heal, name="ig3-ipc-heal", daemon=True).start()

    def _heal(self) -> None:
        """Re-open closed streams (rebuilding the client if it is gone) and re-send failed publishes."""
        if not self._healing.acquire(blocking=False):
            return  # another healer is at work
        try:
            delay = self._min
            while not self._closing:
                try:
                    with self._lock:
                        missing = [t for t in self._subs if t not in self._ops]
                    for topic in missing:
                        self._open_stream(topic)
                    while self._retry:
                        topic, payload, qos = self._retry[0]
                        self._client.publish_to_iot_core(topic_name=topic, qos=self._qos[qos], payload=payload)
                        self._retry.popleft()  # only once it went out: a failure keeps it for the next try
                    self.reconnects += 1
                    log.info("IPC streams re-opened (%d)", self.reconnects)
                    return
                except Exception as exc:
                    log.warning("IPC heal failed (%s); new client in %.1f s", exc, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, self._max)
                    try:
                        old, self._client = self._client, self._factory()
                        with self._lock:
                            self._ops.clear()  # streams of the old client are dead
                        try:
                            old.close()
                        except Exception:
                            pass
                    except Exception as exc2:
                        log.warning("IPC reconnect failed: %s", exc2)
        finally:
            self._healing.release()

    # -- publishing ----------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        if self._client is None:
            raise TransportError("IPC transport is not connected")
        try:
            fut = self._client.publish_to_iot_core_async(topic_name=topic, qos=self._qos[qos], payload=payload)
        except Exception as exc:
            self._failed(topic, payload, qos, exc)
            return

        def done(f: Future) -> None:
            exc = f.exception()
            if exc is not None:
                self._failed(topic, payload, qos, exc)

        fut.add_done_callback(done)
        if qos > 0:
            with self._lock:
                self._pending.append(fut)
                while self._pending and self._pending[0].done():
                    self._pending.popleft()

    def _failed(self, topic: str, payload: bytes, qos: int, exc: BaseException) -> None:
        if qos == 0:
            return  # at most once: a lost stream chunk is visible to the consumer by its seq gap
        log.warning("IPC publish to %s failed (%s); kept for re-send", topic, exc)
        self._retry.append((topic, payload, qos))
        if not self._closing:
            self._heal_later()

    def flush(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            waiting = list(self._pending)
        for fut in waiting:
            try:
                fut.exception(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return False
            except Exception:
                continue
        while self._retry and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._retry
