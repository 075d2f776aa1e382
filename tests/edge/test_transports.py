"""The agent over Greengrass v2 IPC (injected GreengrassCoreIPCClientV2 stand-in) and the legacy
Greengrass v1 adapter (injected greengrasssdk stand-in), with real llama.cpp generation."""
from __future__ import annotations

import json
import secrets
import time
import types

from awsiot.greengrasscoreipc import model

from ig3 import wire
from ig3.wire import DeviceResult
from ig3_edge.agent import Agent
from ig3_edge.backends.llama_cpp import LlamaCppBackend
from ig3_edge.config import AgentConfig
from ig3_edge.models import ModelRegistry
from ig3_edge.signing import ResultSigner, recover_signer
from ig3_edge.transports.greengrass_v1 import GreengrassV1Transport
from ig3_edge.transports.ipc import GreengrassIpcTransport
from tests.edge.conftest import _Lines, task_msg, uid
from tests.edge.fake_ipc import FakeGreengrassCoreIPCClientV2, FakeIotCore


def _agent(thing, transport, models_dir) -> Agent:
    cfg = AgentConfig(thing=thing, models_dir=models_dir, transport=transport.name, threads=1, n_ctx=512,
                      drain_s=0.5)
    backend = LlamaCppBackend(ModelRegistry(models_dir), slots=1, n_threads=1, n_ctx=512)
    agent = Agent(cfg, transport, backend, ResultSigner("0x" + secrets.token_hex(32)), out=_Lines())
    agent.start()
    return agent


def _results(core: FakeIotCore, thing: str) -> dict[str, dict]:
    topic = wire.device_results_topic(thing)
    return {json.loads(p)["task_id"]: json.loads(p) for t, p, _q in core.log if t == topic}


def test_ipc_transport_runs_tasks_and_resubscribes_after_stream_loss(tiny_models):
    core = FakeIotCore()
    clients: list[FakeGreengrassCoreIPCClientV2] = []

    def factory():
        clients.append(FakeGreengrassCoreIPCClientV2(core))
        return clients[-1]

    thing = uid("gg")
    transport = GreengrassIpcTransport(factory, reconnect_min_s=0.05)
    agent = _agent(thing, transport, tiny_models)
    try:
        # Subscribed to exactly this device's inbound topics, at least once.
        assert sorted(clients[0].subscribed) == sorted([(wire.device_tasks_topic(thing), model.QOS.AT_LEAST_ONCE),
                                                        (wire.device_cancel_topic(thing), model.QOS.AT_LEAST_ONCE)])
        first = uid("i1")
        core.route(wire.device_tasks_topic(thing), json.dumps(task_msg(first, max_tokens=12)).encode(), "1")
        res = core.wait(lambda: first in (r := _results(core, thing)) and r)[first]
        assert res["status"] == "ok" and res["usage"]["completion_tokens"] == 12
        assert recover_signer(DeviceResult.model_validate(res)) == agent.signer.address
        stream = [json.loads(p) for t, p, q in core.log if t == wire.task_stream_topic(first)]
        assert [c["seq"] for c in stream] == list(range(len(stream))) and stream[-1]["final"]
        assert "".join(c["delta"] for c in stream) == res["output"]["text"]
        qos = {t.rsplit("/", 1)[1]: q for t, _p, q in core.log}
        assert qos["results"] == model.QOS.AT_LEAST_ONCE and qos["stream"] == model.QOS.AT_MOST_ONCE
        assert wire.device_heartbeat_topic(thing) in {t for t, _p, _q in core.log}

        clients[0].drop_streams()  # the nucleus restarted: streams closed under us
        core.wait(lambda: len([s for s in core.subs if s[0] == wire.device_tasks_topic(thing)]) == 1)
        assert transport.reconnects >= 1
        second = uid("i2")
        core.route(wire.device_tasks_topic(thing), json.dumps(task_msg(second, max_tokens=4)).encode(), "1")
        assert core.wait(lambda: second in (r := _results(core, thing)) and r)[second]["status"] == "ok"
    finally:
        agent.shutdown(drain_s=0.2)
    assert clients[-1].closed


def test_ipc_transport_rebuilds_a_lost_client_and_resends_results(tiny_models):
    core = FakeIotCore()
    clients: list[FakeGreengrassCoreIPCClientV2] = []

    def factory():
        clients.append(FakeGreengrassCoreIPCClientV2(core))
        return clients[-1]

    thing = uid("gg")
    transport = GreengrassIpcTransport(factory, reconnect_min_s=0.05)
    agent = _agent(thing, transport, tiny_models)
    try:
        clients[0].kill()  # the IPC socket died: every call on this client now fails
        transport.publish(wire.device_results_topic(thing), b'{"task_id": "kept", "attempt": 1}', qos=1)
        core.wait(lambda: len(clients) >= 2 and any(t == wire.device_results_topic(thing) and b"kept" in p
                                                     for t, p, _q in core.log))
        core.wait(lambda: len([s for s in core.subs if s[0] == wire.device_tasks_topic(thing)]) >= 1)
        tid = uid("i3")
        core.route(wire.device_tasks_topic(thing), json.dumps(task_msg(tid, max_tokens=4)).encode(), "1")
        assert core.wait(lambda: tid in (r := _results(core, thing)) and r)[tid]["status"] == "ok"
    finally:
        agent.shutdown(drain_s=0.2)


class _FakeGreengrassSdk(types.ModuleType):
    """greengrasssdk's surface the adapter uses: ``client("iot-data").publish(topic=, queueFullPolicy=, payload=)``."""

    def __init__(self) -> None:
        super().__init__("greengrasssdk")
        self.published: list[tuple[str, bytes]] = []
        outer = self

        class IotDataClient:
            def publish(self, *, topic: str, queueFullPolicy: str = "AllOrException", payload: bytes = b"") -> None:
                assert queueFullPolicy in ("AllOrException", "BestEffort")
                outer.published.append((topic, payload))

        self._client_cls = IotDataClient

    def client(self, name: str):
        assert name == "iot-data"
        return self._client_cls()


def _v1_context(topic: str):
    return types.SimpleNamespace(client_context=types.SimpleNamespace(custom={"subject": topic}))


def test_greengrass_v1_adapter(tiny_models):
    sdk = _FakeGreengrassSdk()
    thing = uid("v1")
    transport = GreengrassV1Transport(sdk=sdk)
    agent = _agent(thing, transport, tiny_models)
    try:
        tid = uid("l1")
        # The v1 runtime hands the Lambda the parsed JSON payload and the topic in the context.
        transport.deliver(task_msg(tid, max_tokens=6), _v1_context(wire.device_tasks_topic(thing)))
        end = time.monotonic() + 10
        while time.monotonic() < end and not any(t == wire.device_results_topic(thing) for t, _ in sdk.published):
            time.sleep(0.02)
        res = next(json.loads(p) for t, p in sdk.published if t == wire.device_results_topic(thing))
        assert res["task_id"] == tid and res["status"] == "ok" and res["usage"]["completion_tokens"] == 6
        transport.deliver({"x": 1}, types.SimpleNamespace(client_context=None))  # no topic: ignored, no crash
        assert any(t == wire.device_heartbeat_topic(thing) for t, _ in sdk.published)
    finally:
        agent.shutdown(drain_s=0.2)


def test_greengrass_v1_without_sdk_says_so():
    import pytest

    from ig3_edge.transports.base import TransportError

    with pytest.raises(TransportError, match="not a Greengrass v1 core"):
        GreengrassV1Transport().connect()
