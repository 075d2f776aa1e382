"""Fixtures for the LLM gateway: a zero-latency OpenAI-compatible upstream, the gateway served by
uvicorn on a free port, a TCP proxy in front of the real Redis (to stop Redis for the gateway
without touching the shared server), real identity (API keys in moto's DynamoDB), usage events
on moto's EventBridge routed to an SQS queue we read back.
"""
from __future__ import annotations

import asyncio
import importlib.util
import pathlib
import socket
import threading
import time
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load_mock():
    spec = importlib.util.spec_from_file_location("llm_mock_backend", ROOT / "bench" / "llm_mock_backend.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


class LoopThread:
    """An asyncio loop in a daemon thread (servers under test run there)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def mock_upstream():
    mod = _load_mock()
    lt = LoopThread()
    mock, runner, port = lt.run(mod.start(0))
    yield mock, f"http://127.0.0.1:{port}/v1"
    lt.run(runner.cleanup())
    lt.stop()


class TcpProxy:
    """Forwards a local port to a target; ``stop()`` kills the listener and every connection,
    so clients see the target vanish (refused / reset) — the shared server itself keeps running."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.stopped.is_set():
                client.close()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self.stopped.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.listener.close()
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


@pytest.fixture
def redis_proxy(redis_url):
    from urllib.parse import urlparse

    u = urlparse(redis_url)
    proxy = TcpProxy(u.hostname or "127.0.0.1", u.port or 6379)
    yield proxy, f"redis://127.0.0.1:{proxy.port}{u.path or '/0'}"
    proxy.stop()


class UvicornServer:
    def __init__(self, app, port: int):
        import uvicorn

        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                                    log_level="warning", http="httptools", loop="asyncio"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> UvicornServer:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture
def usage_queue(aws_env):
    """An SQS queue receiving the bus's UsageRecorded events (an EventBridge rule in moto)."""
    import json

    import boto3

    from ig3.topology import BUS_ENV

    bus = aws_env[BUS_ENV]
    sqs, events = boto3.client("sqs"), boto3.client("events")
    name = "llm-usage-" + uuid.uuid4().hex[:8]
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=name, EventBusName=bus, State="ENABLED",
                    EventPattern=json.dumps({"source": ["ig3"], "detail-type": ["UsageRecorded"]}))
    events.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])

    def read(expect: int, timeout_s: float = 10.0) -> list[dict]:
        got: list[dict] = []
        deadline = time.time() + timeout_s
        while len(got) < expect and time.time() < deadline:
            for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
                got.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return got

    yield bus, read
    events.remove_targets(Rule=name, EventBusName=bus, Ids=["q"])
    events.delete_rule(Name=name, EventBusName=bus)
    sqs.delete_queue(QueueUrl=url)


@pytest.fixture
def api_keys(aws_env, redis_url, redis_prefix):
    """Real identity: hashed API keys in moto's DynamoDB, the real Authorizer."""
    import redis as redis_lib

    from ig3.config import table_name
    from ig3.identity.apikeys import ApiKeyService, DynamoApiKeyStore
    from ig3.identity.authorizer import Authorizer
    from ig3.identity.tokens import SecretsManagerKeySource, TokenService

    svc = ApiKeyService(DynamoApiKeyStore(table_name("api_keys")), redis=redis_lib.Redis.from_url(redis_url),
                        redis_prefix=redis_prefix + "apikey:")
    tokens = TokenService(SecretsManagerKeySource("ig3-test/jwt-" + uuid.uuid4().hex[:6]), issuer="https://ig3.test",
                          audience="ig3-api")
    authorizer = Authorizer(tokens, svc)

    def new_key(owner: str | None = None, **limits) -> tuple[str, str]:
        owner = owner or "0x" + uuid.uuid4().hex[:40].ljust(40, "0")
        key, _ = svc.create(owner, name="test", scopes=["llm"], caller_scopes=frozenset({"*"}), **limits)
        return key, owner

    return authorizer, new_key
