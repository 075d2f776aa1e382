"""A stand-in for ``GreengrassCoreIPCClientV2`` (there is no Greengrass nucleus here).

It keeps the real client's call shapes and threading: the same keyword-only methods, the
real ``awsiot.greengrasscoreipc.model`` request/response/event classes, QoS as the model's
string enum, stream events delivered on an executor thread (as the real client does), and
``on_stream_closed`` when a stream ends. Behind it, a tiny in-memory "IoT Core" routes
publishes to subscribers by MQTT topic filter, so a test can act as the cloud.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from awsiot.greengrasscoreipc import model
from paho.mqtt.client import topic_matches_sub


class FakeIotCore:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.subs: list[tuple[str, Callable[[str, bytes], None]]] = []
        self.log: list[tuple[str, bytes, str]] = []  # every publish: topic, payload, qos
        self.cond = threading.Condition()

    def route(self, topic: str, payload: bytes, qos: str) -> None:
        with self.cond:
            self.log.append((topic, payload, qos))
            self.cond.notify_all()
        with self.lock:
            targets = [cb for f, cb in self.subs if topic_matches_sub(f, topic)]
        for cb in targets:
            cb(topic, payload)

    def wait(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        import time

        end = time.monotonic() + timeout
        with self.cond:
            while not (value := predicate()):
                if time.monotonic() >= end:
                    raise AssertionError("timed out")
                self.cond.wait(end - time.monotonic())
            return value


class _Operation:
    def __init__(self, client: "FakeGreengrassCoreIPCClientV2", entry: tuple, on_closed: Callable[[], None] | None):
        self.client, self.entry, self.on_closed, self.closed = client, entry, on_closed, False

    def close(self) -> Future:
        if not self.closed:
            self.closed = True
            with self.client.core.lock:
                if self.entry in self.client.core.subs:
                    self.client.core.subs.remove(self.entry)
            if self.on_closed:
                self.client.executor.submit(self.on_closed)
        f: Future = Future()
        f.set_result(None)
        return f


class FakeGreengrassCoreIPCClientV2:
    def __init__(self, core: FakeIotCore):
        self.core = core
        self.executor = ThreadPoolExecutor(max_workers=4)
        self.operations: list[_Operation] = []
        self.subscribed: list[tuple[str, str]] = []
        self.closed = False

    def subscribe_to_iot_core(self, *, topic_name: str | None = None, qos: str | None = None, stream_handler=None,
                              on_stream_event=None, on_stream_error=None, on_stream_closed=None):
        if self.closed:
            raise ConnectionError("IPC connection closed")
        assert qos in (model.QOS.AT_MOST_ONCE, model.QOS.AT_LEAST_ONCE)
        self.subscribed.append((topic_name, qos))

        def deliver(topic: str, payload: bytes) -> None:
            event = model.IoTCoreMessage(message=model.MQTTMessage(topic_name=topic, payload=payload))
            self.executor.submit(on_stream_event, event)

        entry = (topic_name, deliver)
        with self.core.lock:
            self.core.subs.append(entry)
        op = _Operation(self, entry, on_stream_closed)
        self.operations.append(op)
        return model.SubscribeToIoTCoreResponse(), op

    def publish_to_iot_core(self, *, topic_name: str | None = None, qos: str | None = None, payload=None, **_: Any):
        if self.closed:
            raise ConnectionError("IPC connection closed")
        assert qos in (model.QOS.AT_MOST_ONCE, model.QOS.AT_LEAST_ONCE)
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        self.core.route(topic_name, data, qos)
        return model.PublishToIoTCoreResponse()

    def publish_to_iot_core_async(self, **kwargs: Any) -> Future:
        f: Future = Future()
        try:
            f.set_result(self.publish_to_iot_core(**kwargs))
        except Exception as exc:
            f.set_exception(exc)
        return f

    def close(self, *, executor_wait: bool = True) -> Future:
        self.closed = True
        self.executor.shutdown(wait=executor_wait)
        f: Future = Future()
        f.set_result(None)
        return f

    def kill(self) -> None:
        """The IPC socket died: calls fail from now on and the streams are gone (no callbacks)."""
        self.closed = True
        with self.core.lock:
            for op in self.operations:
                if op.entry in self.core.subs:
                    self.core.subs.remove(op.entry)

    def drop_streams(self) -> None:
        """What a nucleus restart looks like to a component: every stream is closed."""
        for op in list(self.operations):
            op.close()
