"""The transport interface the agent talks to: connect, subscribe, publish, flush, close.

Contract (every adapter keeps it, the agent relies on it):
- ``subscribe`` returns once the subscription is in place; the transport remembers it and
  re-subscribes by itself after any reconnect.
- handlers run on the transport's own thread and must not block (the agent only parses and
  enqueues there).
- ``publish`` never blocks on the network; QoS 1 messages published while disconnected are
  kept and sent after the reconnect (bounded), ``flush`` waits until they are acknowledged.
"""
from __future__ import annotations

from typing import Callable, Protocol

MessageHandler = Callable[[str, bytes], None]


class TransportError(RuntimeError):
    pass


class Transport(Protocol):
    name: str

    def connect(self, timeout: float = 30.0) -> None: ...

    def subscribe(self, topic: str, handler: MessageHandler, qos: int = 1, timeout: float = 10.0) -> None: ...

    def unsubscribe(self, topic: str) -> None: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None: ...

    def flush(self, timeout: float = 5.0) -> bool: ...

    def close(self) -> None: ...

    @property
    def connected(self) -> bool: ...
