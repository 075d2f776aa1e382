"""Shared fixtures: real services only.

- ``moto_endpoint``: a moto server (ThreadedMotoServer) on a free loopback port, for the session.
- ``aws_env``: the topology's resources provisioned in it, env vars set as the functions read them.
- ``redis_url``: the real Redis on 127.0.0.1:6379 (``REDIS_URL`` overrides). Tests never flush
  the server: every test gets its own key prefix (``redis_prefix``), since other runs may share it.
- ``mqtt_url``: the real Mosquitto on 127.0.0.1:1883 (``MQTT_URL`` overrides).
"""
from __future__ import annotations

import os
import socket
import uuid

import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_REGION", "us-east-1")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "ig3-test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def aws_env(moto_endpoint):
    """Topology resources in moto; env vars set for in-process handlers. Yields the env dict."""
    from ig3.aws import reset_clients
    from ig3.local.resources import provision
    from ig3.topology import TOPOLOGY

    stage = "t" + uuid.uuid4().hex[:6]
    env = provision(TOPOLOGY, endpoint_url=moto_endpoint, stage=stage)
    old = {k: os.environ.get(k) for k in [*env, "AWS_ENDPOINT_URL"]}
    os.environ.update(env)
    os.environ["AWS_ENDPOINT_URL"] = moto_endpoint
    reset_clients()
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    reset_clients()


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Redis is required at {url} (start it: redis-server --daemonize yes): {exc}")
    return url


@pytest.fixture
def redis_prefix(redis_url):
    """A unique key prefix for one test; its keys are deleted afterwards (no FLUSHDB)."""
    import redis

    prefix = f"t:{uuid.uuid4().hex[:10]}:"
    yield prefix
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=prefix + "*", count=1000))
    if keys:
        r.delete(*keys)


@pytest.fixture(scope="session")
def mqtt_url() -> str:
    url = os.environ.get("MQTT_URL", "mqtt://127.0.0.1:1883")
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as exc:
        pytest.fail(f"an MQTT broker is required at {url} (start it: mosquitto -d): {exc}")
    return url
