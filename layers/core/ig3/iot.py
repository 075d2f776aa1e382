"""Publishing to devices and task streams through IoT Core's data plane — port and adapters."""
from __future__ import annotations

from typing import Any, Protocol


class IotPublisher(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None: ...


class IotDataPublisher:
    """boto3 ``iot-data`` Publish (locally the IoT stand-in republishes it to the MQTT broker)."""

    def __init__(self, client: Any | None = None):
        self._client = client

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        if self._client is None:
            from ig3.aws import client

            self._client = client("iot-data")
        self._client.publish(topic=topic, qos=qos, payload=payload)


class MemoryIotPublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.sent.append((topic, payload))
