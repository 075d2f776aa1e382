"""boto3 clients, created once per process (Lambda containers reuse them across invocations).

Endpoints come from boto3's own ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>`` variables,
so the local cloud points handlers at moto and the IoT stand-in without code changes.
"""
from __future__ import annotations

import os
import threading
from typing import Any

import boto3
from botocore.config import Config

_lock = threading.Lock()
_clients: dict[str, Any] = {}
_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2, read_timeout=10,
                 max_pool_connections=32)


def client(service: str) -> Any:
    with _lock:
        c = _clients.get(service)
        if c is None:
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            c = _clients[service] = boto3.session.Session().client(service, region_name=region, config=_CONFIG)
        return c


def reset_clients() -> None:
    """Forget cached clients (tests that switch endpoints)."""
    with _lock:
        _clients.clear()
