"""Legacy adapter: the agent as a long-lived Greengrass **v1** Lambda, over ``greengrasssdk``.

AWS IoT Greengrass v1 reached end of support on 2026-10-07: new devices run the v2 component
(``transports.ipc``). This adapter exists only for fleets still on v1 cores, and stays thin:
- inbound: v1 delivers subscribed messages to the Lambda's ``function_handler(event, context)``
  (the topic is ``context.client_context.custom["subject"]``); the group's subscriptions —
  not code — decide which topics arrive, so ``subscribe`` only records the handler.
- outbound: ``greengrasssdk.client("iot-data").publish(topic=..., payload=...)`` (synchronous,
  spooled by the v1 core), so ``flush`` has nothing to wait for.
``greengrasssdk`` is imported lazily (it exists only inside a v1 core), or injected for tests.
Deploy it as a *pinned* (long-lived) Lambda with handler ``ig3_edge.transports.greengrass_v1.function_handler``.
"""
from __future__ import annotations

import json
import logging
import threading
from types import ModuleType
from typing import Any

from ig3_edge.transports.base import MessageHandler, TransportError

log = logging.getLogger("ig3_edge.greengrass_v1")


class GreengrassV1Transport:
    name = "greengrass-v1"

    def __init__(self, sdk: ModuleType | Any | None = None):
        self._sdk = sdk
        self._iot: Any = None
        self._handlers: dict[str, MessageHandler] = {}

    def connect(self, timeout: float = 30.0) -> None:
        if self._sdk is None:
            try:
                import greengrasssdk  # type: ignore[import-not-found]
            except ImportError as exc:
                raise TransportError("greengrasssdk is not installed: this is not a Greengrass v1 core") from exc
            self._sdk = greengrasssdk
        self._iot = self._sdk.client("iot-data")

    @property
    def connected(self) -> bool:
        return self._iot is not None

    def subscribe(self, topic: str, handler: MessageHandler, qos: int = 1, timeout: float = 10.0) -> None:
        self._handlers[topic] = handler

    def unsubscribe(self, topic: str) -> None:
        self._handlers.pop(topic, None)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        if self._iot is None:
            raise TransportError("Greengrass v1 transport is not connected")
        self._iot.publish(topic=topic, queueFullPolicy="AllOrException", payload=payload)

    def flush(self, timeout: float = 5.0) -> bool:
        return True

    def close(self) -> None:
        self._iot = None

    def deliver(self, event: Any, context: Any) -> None:
        """Hand one v1 Lambda invocation (a subscribed message) to the agent."""
        try:
            topic = context.client_context.custom["subject"]
        except (AttributeError, KeyError, TypeError):
            log.warning("v1 invocation without a topic (context.client_context.custom.subject); ignored")
            return
        handler = self._handlers.get(topic)
        if handler is None:
            return
        if isinstance(event, (bytes, bytearray)):
            payload = bytes(event)
        elif isinstance(event, str):
            payload = event.encode()
        else:  # the v1 runtime hands JSON payloads over already parsed
            payload = json.dumps(event).encode()
        handler(topic, payload)


_lock = threading.Lock()
_transport: GreengrassV1Transport | None = None


def function_handler(event: Any, context: Any) -> None:
    """The v1 Lambda entry point: starts the agent once (config from ``IG3_AGENT_*``), then delivers."""
    global _transport
    with _lock:
        if _transport is None:
            from ig3_edge.config import parse_config
            from ig3_edge.main import build_agent

            transport = GreengrassV1Transport()
            build_agent(parse_config([]), transport=transport).start()
            _transport = transport
    _transport.deliver(event, context)
