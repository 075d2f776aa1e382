"""End to end through `ig3 up` (moto, Redis, MQTT, the functions, the real edge agents serving
SmolLM2 with llama.cpp): the official openai SDK against the local API front, edge routing,
streaming relayed from a device, and a device shut down mid-stream.

Stated policy (``ig3.llm.gateway``): a device lost AFTER the first byte ends the stream with an
error event (code ``device_lost``); the AI gateway still retries the task elsewhere. Before the
first byte a retried attempt takes over invisibly (covered in test_edge_relay.py).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import openai
import psutil
import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def local_cloud(tmp_path_factory):
    port = free_port()
    # IG3_AGENT_DRAIN_S=0: a shut-down agent releases its running task at once instead of finishing
    # it within the default 10 s drain (SmolLM2 often finishes a 400-token story inside that grace,
    # and then nothing is lost mid-stream: the test would measure the machine's speed).
    env = {**os.environ, "IG3_LLM_EDGE_DEADLINE_S": "45", "IG3_QUEUE_WAIT_S": "20", "IG3_AGENT_DRAIN_S": "0"}
    env.pop("REDIS_URL", None)
    env.pop("MQTT_URL", None)  # embedded Redis and broker: nothing shared with other tests
    state = tmp_path_factory.mktemp("ig3up")
    ig3 = os.path.join(os.path.dirname(sys.executable), "ig3")
    proc = subprocess.Popen([ig3, "up", "--port", str(port), "--devices", "2", "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=open(state / "ig3-up.log", "w"), text=True, env=env)
    ready: dict = {}

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            m = re.match(r"ready (\S+) api_key=(\S+)", line.strip())
            if m:
                ready["url"], ready["key"] = m.group(1), m.group(2)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.time() + 240
    while "key" not in ready:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("ig3 up did not become ready: " + (state / "ig3-up.log").read_text()[-2000:])
        time.sleep(0.5)
    client = openai.OpenAI(base_url=ready["url"] + "/v1", api_key=ready["key"], max_retries=0, timeout=120)
    # The fleet announces its models by heartbeat: wait until the catalogue lists one.
    edge_models: list[str] = []
    while time.time() < deadline and not edge_models:
        edge_models = [m.id for m in client.models.list() if m.owned_by == "ig3-edge"]
        time.sleep(0.5)
    assert edge_models, "no edge model came online"
    yield client, edge_models[0], proc
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_chat_and_stream_from_a_real_device(local_cloud):
    client, model, _ = local_cloud
    raw = client.chat.completions.with_raw_response.create(
        model="ig3/auto", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=12, temperature=0)
    out = raw.parse()
    assert raw.headers["x-ig3-route"] == "edge" and raw.headers["x-ig3-model"] == model
    assert raw.headers["x-ig3-device"].startswith("ig3-") and raw.headers["x-ig3-task"].startswith("tsk_")
    assert out.choices[0].message.content and 0 < out.usage.completion_tokens <= 12 and out.usage.prompt_tokens > 0

    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Count to five."}],
                                            max_tokens=16, stream=True, stream_options={"include_usage": True})
    text, usage = [], None
    for c in stream:
        usage = c.usage or usage
        text += [ch.delta.content or "" for ch in c.choices]
    assert "".join(text) and usage is not None and 0 < usage.completion_tokens <= 16


def test_device_shut_down_mid_stream_ends_with_an_error_event(local_cloud):
    client, model, up = local_cloud
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        max_tokens=400, stream=True)
    thing = raw.headers["x-ig3-device"]
    device = next(p for p in psutil.Process(up.pid).children(recursive=True)
                  if thing in " ".join(p.cmdline()))
    got: list[str] = []
    t0 = time.time()
    with pytest.raises(openai.APIError) as e:
        for c in raw.parse():
            got += [ch.delta.content or "" for ch in c.choices]
            if len(got) == 3:
                device.send_signal(signal.SIGTERM)  # the agent gives the task back and stops
    assert len(got) >= 3 and time.time() - t0 < 90
    assert "lost mid-stream" in str(e.value)
