"""Fixtures for the edge agent tests: tiny real GGUF models, agents on real brokers, MQTT observers."""
from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import pytest

from ig3 import wire
from ig3_edge.backends.llama_cpp import LlamaCppBackend
from ig3_edge.config import AgentConfig
from ig3_edge.models import ModelRegistry
from ig3_edge.signing import ResultSigner
from ig3_edge.tinymodel import write_tiny_gguf
from tests.edge.brokers import EmbeddedBroker

TINY = "tiny-llama"
TINY_EMBED = "tiny-embed"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    # ctx 4096 so "long" tasks (thousands of tokens) are possible for back-pressure/deadline tests.
    write_tiny_gguf(d / "tiny.gguf", name="Tiny Llama", seed=7, n_ctx=4096)
    write_tiny_gguf(d / "tiny-embed.gguf", name="Tiny Embed", seed=8, pooling="mean")
    return d


@pytest.fixture
def embedded_broker():
    broker = EmbeddedBroker().start()
    yield broker
    broker.stop()


def uid(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Observer:
    """A paho client that records every message on the topics it watches."""

    def __init__(self, url: str, topics: list[str], protocol: int = 4):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.messages: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
        self.cond = threading.Condition()
        self.topics = topics
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=uid("obs"),
                                  protocol=mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311)
        self.client.reconnect_delay_set(1, 2)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in self.topics])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert subscribed.wait(5), "observer could not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = {"_raw": msg.payload}
        with self.cond:
            self.messages[msg.topic].append((time.perf_counter(), body))
            self.cond.notify_all()

    def publish(self, topic: str, payload: Any, qos: int = 1) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(topic, data, qos=qos).wait_for_publish(5)

    def wait(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting; have {dict((k, len(v)) for k, v in self.messages.items())}")
                self.cond.wait(left)

    def bodies(self, topic: str) -> list[dict[str, Any]]:
        with self.cond:
            return [b for _t, b in self.messages.get(topic, [])]

    def results(self, thing: str) -> dict[str, dict[str, Any]]:
        return {r["task_id"]: r for r in self.bodies(wire.device_results_topic(thing))}

    def wait_results(self, thing: str, task_ids: list[str], timeout: float = 15.0) -> dict[str, dict[str, Any]]:
        return self.wait(lambda: (r := self.results(thing)) and all(t in r for t in task_ids) and r, timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def task_msg(task_id: str, *, model: str = TINY, kind: str = "completion", prompt: str = "hello world",
             messages: list[dict] | None = None, texts: list[str] | None = None, max_tokens: int = 16,
             deadline_s: float = 30.0, stream: bool = True, attempt: int = 1, **limits: Any) -> dict[str, Any]:
    inp: dict[str, Any] = {"completion": {"prompt": prompt}, "chat": {"messages": messages},
                           "embedding": {"texts": texts}}[kind]
    return {"v": 1, "id": task_id, "attempt": attempt, "kind": kind, "model": model, "input": inp,
            "limits": {"max_tokens": max_tokens, "temperature": 0.0, **limits},
            "deadline": time.time() + deadline_s, "stream": stream}


@pytest.fixture
def make_agent(tiny_models):
    """Start an in-process agent on a broker: ``make_agent(url, **config)`` -> (agent, thing)."""
    from ig3_edge.agent import Agent
    from ig3_edge.transports.mqtt import MqttTransport

    started = []

    def make(url: str, *, models_dir: Path | None = None, protocol: int = 4, **overrides: Any):
        thing = uid("thing")
        cfg = AgentConfig(thing=thing, models_dir=models_dir or tiny_models, mqtt_url=url, mqtt_protocol=protocol,
                          capacity=overrides.pop("capacity", 1), max_queue=overrides.pop("max_queue", 2),
                          heartbeat_s=overrides.pop("heartbeat_s", 30.0), threads=1, n_ctx=4096,
                          drain_s=overrides.pop("drain_s", 2.0), **overrides)
        transport = MqttTransport(url, client_id=thing, protocol=protocol, reconnect_min_s=0.2, reconnect_max_s=1.0)
        backend = LlamaCppBackend(ModelRegistry(cfg.models_dir), slots=cfg.capacity, n_threads=1, n_ctx=4096)
        signer = ResultSigner("0x" + secrets.token_hex(32))
        out = _Lines()
        agent = Agent(cfg, transport, backend, signer, out=out)
        agent.start()
        started.append(agent)
        assert out.lines and out.lines[0].startswith("agent ready "), out.lines
        return agent, thing

    yield make
    for agent in started:
        agent.shutdown(drain_s=0.5)


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, s: str) -> int:
        self.lines += [x for x in s.splitlines() if x]
        return len(s)

    def flush(self) -> None:
        pass
