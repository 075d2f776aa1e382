"""Transports behind one interface (``base.Transport``); ``build_transport`` picks one by name.

- ``mqtt``: plain MQTT (paho-mqtt 2.x, 3.1.1 or 5) — the local cloud and non-Greengrass hosts.
- ``ipc``: Greengrass v2 IPC (``awsiot.greengrasscoreipc.clientv2``) — production on a core device.
- ``greengrass-v1``: a thin adapter over the legacy ``greengrasssdk`` (Greengrass v1 reached end of
  support on 2026-10-07; only for fleets still on v1 Lambdas).
Each imports its client library lazily, so a device carries only the one it uses.
"""
from __future__ import annotations

from typing import Any

from ig3_edge.transports.base import Transport


def build_transport(kind: str, *, thing: str, mqtt_url: str = "", mqtt_protocol: int = 4, **kwargs: Any) -> Transport:
    if kind == "mqtt":
        from ig3_edge.transports.mqtt import MqttTransport

        return MqttTransport(mqtt_url, client_id=thing, protocol=mqtt_protocol, **kwargs)
    if kind == "ipc":
        from ig3_edge.transports.ipc import GreengrassIpcTransport

        return GreengrassIpcTransport(**kwargs)
    if kind == "greengrass-v1":
        from ig3_edge.transports.greengrass_v1 import GreengrassV1Transport

        return GreengrassV1Transport(**kwargs)
    raise ValueError(f"unknown transport {kind!r}")
