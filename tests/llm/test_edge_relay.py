"""The edge relay policy, through the openai SDK, with an in-memory fake of the EdgeBackend port
(the real adapter is covered by test_edge_mqtt.py): retries before the first byte are invisible,
a device lost after it ends the stream with an error event, non-streaming waits on the terminal
record, usage is the device's exact count."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import openai
import pytest

from ig3.llm.edge import EdgeEvent, EdgeJob, Terminal
from ig3.wire import ResultError, StreamChunk, Usage
from tests.conftest import free_port
from tests.llm.conftest import UvicornServer


@dataclass
class FakeRun:
    task_id: str
    script: list
    device: str | None = "m1-a"
    reason: str | None = "nearest free device"
    closed: bool = False

    async def events(self):
        for item in self.script:
            await asyncio.sleep(0.001)
            yield item

    async def close(self) -> None:
        self.closed = True


@dataclass
class FakeEdge:
    scripts: list = field(default_factory=list)
    jobs: list = field(default_factory=list)
    runs: list = field(default_factory=list)

    async def start(self, job: EdgeJob) -> FakeRun:
        self.jobs.append(job)
        run = FakeRun(f"tsk_{len(self.jobs)}", self.scripts.pop(0))
        self.runs.append(run)
        return run


def chunk(attempt: int, seq: int, delta: str = "", final: bool = False, usage: tuple | None = None,
          error: ResultError | None = None) -> EdgeEvent:
    return EdgeEvent(chunk=StreamChunk(task_id="t", attempt=attempt, seq=seq, delta=delta, final=final,
                                       finish_reason="stop" if final else None, error=error,
                                       usage=Usage(prompt_tokens=usage[0], completion_tokens=usage[1]) if usage else None))


@pytest.fixture
def edge_gateway(redis_url, redis_prefix):
    from ig3.api.http import Principal
    from ig3.events import MemoryEventPublisher
    from ig3.llm.asgi import LlmApp
    from ig3.llm.config import parse_config
    from ig3.llm.edge import StaticCatalogue
    from ig3.llm.gateway import Gateway
    from ig3.llm.redisguard import RedisGuard
    from ig3.llm.routing import EdgeCapacity
    from ig3.llm.usage import UsageRecorder

    edge = FakeEdge()
    published = MemoryEventPublisher()

    async def authorize(header):
        return Principal(subject="0x" + "e" * 40, kind="apikey", key_id="k_edge")

    async def factory():
        redis = RedisGuard(redis_url, timeout_s=0.5)
        usage = UsageRecorder(published, interval_s=0.05)
        gw = Gateway(config=parse_config({"ig3": {"aliases": {"ig3/auto": {"edge": ["tiny"]}}}}), authorize=authorize,
                     redis=redis, catalogue=StaticCatalogue({"tiny": EdgeCapacity("tiny", devices=2, free_slots=2)}),
                     usage=usage, edge=edge, key_prefix=redis_prefix + "llm:")
        return gw, [usage.close, redis.close]

    with UvicornServer(LlmApp(factory, freeze_gc=False), free_port()) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused-by-this-fake-auth", max_retries=0, timeout=10)
        yield client, edge, published


def _stream_text(stream) -> tuple[str, object]:
    text, usage = [], None
    for c in stream:
        usage = c.usage or usage
        text += [ch.delta.content or "" for ch in c.choices]
    return "".join(text), usage


def test_stream_relays_device_chunks_with_usage(edge_gateway):
    client, edge, published = edge_gateway
    edge.scripts.append([chunk(1, 0, "Hel"), chunk(1, 1, "lo"), chunk(1, 2, "", final=True, usage=(7, 2))])
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=9, temperature=0.3, stop=["\n"],
        stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-ig3-route"] == "edge" and raw.headers["x-ig3-device"] == "m1-a"
    assert raw.headers["x-ig3-task"] == "tsk_1"
    text, usage = _stream_text(raw.parse())
    assert text == "Hello" and usage.prompt_tokens == 7 and usage.completion_tokens == 2
    job = edge.jobs[0]
    assert job.kind == "chat" and job.model == "tiny" and job.stream
    assert job.limits.max_tokens == 9 and job.limits.temperature == 0.3 and job.limits.stop == ["\n"]
    assert edge.runs[0].closed


def test_retry_before_first_byte_is_invisible(edge_gateway):
    client, edge, _ = edge_gateway
    edge.scripts.append([
        chunk(1, 0, error=ResultError(code="overloaded", message="busy", retryable=True)),  # attempt 1 gave up
        chunk(2, 0, "from "), chunk(2, 1, "attempt two"), chunk(2, 2, final=True, usage=(3, 3)),
    ])
    text, _ = _stream_text(client.chat.completions.create(model="ig3/auto", messages=[{"role": "user", "content": "x"}],
                                                          stream=True))
    assert text == "from attempt two"


@pytest.mark.parametrize("death", ["next_attempt", "released"])
def test_device_lost_mid_stream_ends_with_error_event(edge_gateway, death):
    client, edge, published = edge_gateway
    lost = (chunk(2, 0, "retried elsewhere") if death == "next_attempt"  # the timeouts function re-queued it
            else chunk(1, 2, error=ResultError(code="released", message="shutting down")))  # the agent stopped
    edge.scripts.append([chunk(1, 0, "partial "), chunk(1, 1, "answer"), lost])
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], stream=True)
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in stream:
            got += [ch.delta.content or "" for ch in c.choices]
    assert "".join(got) == "partial answer"
    assert "lost mid-stream" in str(e.value)
    # The relay closes its run after the error event went out: the client can see the event first.
    import time

    deadline = time.time() + 10
    while not edge.runs[0].closed and time.time() < deadline:
        time.sleep(0.02)
    assert edge.runs[0].closed


def test_non_streaming_waits_on_the_terminal_record(edge_gateway):
    client, edge, published = edge_gateway
    edge.scripts.append([EdgeEvent(terminal=Terminal(status="COMPLETED", route="edge", device="m1-b", attempt=1,
                                                     text="Paris.", finish_reason="stop", prompt_tokens=11,
                                                     completion_tokens=2))])
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    out = raw.parse()
    assert out.choices[0].message.content == "Paris." and out.usage.total_tokens == 13
    assert raw.headers["x-ig3-device"] == "m1-b" and not edge.jobs[0].stream
    edge.scripts.append([EdgeEvent(terminal=Terminal(status="FAILED", error_code="deadline_exceeded"))])
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502 and e.value.response.json()["error"]["code"] == "deadline_exceeded"
    # A stream whose task completed without chunks (e.g. the AI gateway's cloud fallback) still answers.
    edge.scripts.append([EdgeEvent(terminal=Terminal(status="COMPLETED", route="cloud", text="via fallback",
                                                     prompt_tokens=2, completion_tokens=2))])
    text, _ = _stream_text(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                                          stream=True))
    assert text == "via fallback"
    # Usage: the TaskService's event for each task is the one record of the work (the route it really
    # ran on, SageMaker time); the gateway publishes none of its own under the task id, not even for
    # the failed request (its event used to race the task's and win).
    import time

    time.sleep(0.5)  # the usage recorder is write-behind: give a stray event time to show up
    assert [e.detail for e in published.events] == []


def test_edge_rejects_what_it_cannot_serve(edge_gateway):
    client, edge, _ = edge_gateway
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], n=2)
    assert not edge.jobs
