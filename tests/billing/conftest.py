"""Billing fixtures: a serialized front to the moto server.

moto 5.x runs ``TransactWriteItems`` without any lock: it applies a transaction's items one
by one and "rolls back" a cancelled one by restoring a deep copy of the whole table taken
before it started. Under concurrent requests that copy raises ``dictionary changed size
during iteration`` (HTTP 500) and a rollback overwrites other transactions' committed writes.
Observed here with 1,000 threads: 100 holds accepted (correct) but 101 hold items left active
(an orphan from a half-rolled-back transaction) — so moto cannot stand in for DynamoDB's
serializable transactions under threads. DynamoDB guarantees each transaction is atomic and
isolated; a lock around moto's WSGI app gives exactly that (one request at a time, as one
serialization order), while the clients stay fully concurrent: every read-then-write race in
our code is still raced. ``bench/bench_billing.py`` measures both fronts side by side.
"""

from __future__ import annotations

import socket
import threading

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SerializedWsgi:
    def __init__(self, app):
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self._lock:
            return list(self._app(environ, start_response))


def start_serialized_moto() -> tuple[str, object]:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    port = free_port()
    server = make_server(
        "127.0.0.1",
        port,
        SerializedWsgi(DomainDispatcherApplication(create_backend_app)),
        True,
        request_handler=MotoRequestHandler,
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}", server


@pytest.fixture(scope="session")
def serialized_moto(aws_env):
    """Same in-process moto backends as ``moto_endpoint`` (so the same tables), one request at a time."""
    endpoint, server = start_serialized_moto()
    yield endpoint
    server.shutdown()


@pytest.fixture
def ddb_serialized(serialized_moto):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "dynamodb",
        endpoint_url=serialized_moto,
        region_name="us-east-1",
        config=Config(max_pool_connections=64, retries={"mode": "standard", "max_attempts": 3}),
    )
