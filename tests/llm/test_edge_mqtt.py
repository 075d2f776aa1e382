"""The real edge adapter: TaskService (DynamoDB in moto, the scheduler's live state in Redis,
SQS in moto) places the task; a device stand-in on the real Mosquitto receives it on its task
topic and streams chunks on ``ig3/v1/tasks/{id}/stream``; the results path
(``TaskService.handle_result`` + the Redis terminal announcement) finishes it. The gateway's
MQTT hub holds ONE connection for every request's subscription."""
from __future__ import annotations

import asyncio
import threading
import time
import uuid

import orjson
import pytest

from ig3.wire import (DeviceResult, DeviceTask, Heartbeat, DeviceLoad, ModelInfo, StreamChunk, TaskOutput, Usage,
                      device_tasks_topic, task_stream_topic)

pytestmark = pytest.mark.integration


class MqttIot:
    """IoT data-plane publishes straight to the broker (what the local IoT stand-in does)."""

    def __init__(self, url: str):
        import paho.mqtt.client as mqtt

        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="iot-" + uuid.uuid4().hex[:8])
        self.c.connect(host, int(port))
        self.c.loop_start()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.c.publish(topic, payload, qos=qos).wait_for_publish(5)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class DeviceStandIn:
    """Receives DeviceTasks on its topic; streams words as chunks, then reports the result."""

    def __init__(self, url: str, thing: str, service, *, words: list[str], result_delay_s: float = 0.0,
                 tail_after_result_s: float | None = None):
        import paho.mqtt.client as mqtt

        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.thing, self.service, self.words = thing, service, words
        self.result_delay_s = result_delay_s
        # When set: only the first chunk goes before the result; the rest (final included) this
        # long after it — the terminal record overtaking the stream's tail, made certain.
        self.tail_after_result_s = tail_after_result_s
        self.tasks: list[DeviceTask] = []
        self.closed = False
        self.c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=thing)
        self.c.on_message = self._on_message
        self.c.connect(host, int(port))
        self.c.subscribe(device_tasks_topic(thing), qos=1)
        self.c.loop_start()
        time.sleep(0.2)

    def _on_message(self, client, userdata, msg) -> None:
        task = DeviceTask.model_validate_json(msg.payload)
        self.tasks.append(task)
        threading.Thread(target=self._work, args=(task,), daemon=True).start()

    def _work(self, task: DeviceTask) -> None:
        topic = task_stream_topic(task.id)
        usage = Usage(prompt_tokens=5, completion_tokens=len(self.words))
        chunks = [StreamChunk(task_id=task.id, attempt=task.attempt, seq=i, delta=w) for i, w in enumerate(self.words)]
        chunks.append(StreamChunk(task_id=task.id, attempt=task.attempt, seq=len(self.words), final=True,
                                  finish_reason="stop", usage=usage))
        split = len(chunks) if self.tail_after_result_s is None else 1
        for c in chunks[:split]:
            if not self._publish(topic, c):
                return
        time.sleep(self.result_delay_s)  # the results path (IoT rule -> SQS -> function) can lag
        # The results function's work: apply the result, announce the terminal record on Redis.
        self.service.handle_result(DeviceResult(task_id=task.id, attempt=task.attempt, thing=self.thing, status="ok",
                                                output=TaskOutput(text="".join(self.words), finish_reason="stop"),
                                                usage=usage))
        if split < len(chunks):
            time.sleep(self.tail_after_result_s)
            for c in chunks[split:]:
                if not self._publish(topic, c):
                    return

    def _publish(self, topic: str, chunk: StreamChunk) -> bool:
        """Publish and wait for the broker's ack; False once the test has closed the stand-in."""
        if self.closed:
            return False
        try:
            self.c.publish(topic, chunk.model_dump_json(), qos=1).wait_for_publish(5)
        except RuntimeError:  # disconnected by close() while this thread was still streaming
            if not self.closed:
                raise
            return False
        return True

    def close(self) -> None:
        self.closed = True
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def edge_stack(request, aws_env, redis_url, redis_prefix, mqtt_url):
    import redis as redis_lib

    from ig3.config import DispatchSettings, queue_url, table_name
    from ig3.events import MemoryEventPublisher
    from ig3.llm.edge import MqttStreamHub, TaskServiceEdgeBackend
    from ig3.scheduler import LiveState, Scheduler
    from ig3.tasks.notify import RedisTerminalNotifier
    from ig3.tasks.placement import SchedulerPlacer
    from ig3.tasks.queue import SqsTaskQueue
    from ig3.tasks.service import TaskService
    from ig3.tasks.store import DynamoTaskStore

    r = redis_lib.Redis.from_url(redis_url)
    live = LiveState(r, prefix=redis_prefix)
    model = "m-" + uuid.uuid4().hex[:6]
    thing = "m1-" + uuid.uuid4().hex[:8]
    live.apply_heartbeats([Heartbeat(thing=thing, ts=time.time(), load=DeviceLoad(capacity=2),
                                     models=[ModelInfo(name=model)])])
    iot = MqttIot(mqtt_url)
    service = TaskService(store=DynamoTaskStore(table_name("tasks")), placer=SchedulerPlacer(Scheduler(live), live),
                          iot=iot, queue=SqsTaskQueue(queue_url("tasks"), queue_url("timeouts")),
                          events=MemoryEventPublisher(), notifier=RedisTerminalNotifier(r),
                          settings=DispatchSettings(edge_attempts=2, cloud_attempts=0))
    marker = request.node.get_closest_marker("device")
    device = DeviceStandIn(mqtt_url, thing, service, words=["The ", "answer ", "is ", "42."],
                           **(marker.kwargs if marker else {}))
    hub = MqttStreamHub(mqtt_url)
    backend = TaskServiceEdgeBackend(lambda: service, hub, redis_url)
    yield backend, hub, device, model, live
    device.close()
    iot.close()
    hub.stop()


def _job(model: str, stream: bool):
    from ig3.llm.edge import EdgeJob
    from ig3.wire import ChatMessage, TaskInput, TaskLimits

    return EdgeJob(request_id="req_" + uuid.uuid4().hex, account="0x" + "a" * 40, kind="chat", model=model,
                   input=TaskInput(messages=[ChatMessage(role="user", content="what is the answer?")]),
                   limits=TaskLimits(max_tokens=16), stream=stream, deadline_s=20)


def test_stream_chunks_and_terminal_through_the_real_path(edge_stack):
    backend, hub, device, model, live = edge_stack

    async def go():
        runs = [await backend.start(_job(model, stream=True)) for _ in range(2)]
        assert hub.subscriptions == 2  # two requests, one connection, two subscriptions
        out = []
        for run in runs:
            deltas, terminal, final = [], None, None
            async for ev in run.events():
                if ev.chunk is not None:
                    deltas.append(ev.chunk.delta)
                    if ev.chunk.final:
                        final = ev.chunk
                if ev.terminal is not None:
                    terminal = ev.terminal
                    break
            await run.close()
            out.append((run, "".join(deltas), final, terminal))
        await backend.close()
        return out

    results = asyncio.run(go())
    assert hub.subscriptions == 0
    for run, text, final, terminal in results:
        assert run.device == device.thing and run.task_id.startswith("tsk_")
        assert text == "The answer is 42."
        assert final is not None and final.usage.completion_tokens == 4
        assert terminal is not None and terminal.status == "COMPLETED" and terminal.text == "The answer is 42."
        assert terminal.device == device.thing and terminal.completion_tokens == 4
    assert {t.id for t in device.tasks} == {r[0].task_id for r in results}
    assert all(t.attempt == 1 and t.model == model for t in device.tasks)


async def _collect(backend, model):
    run = await backend.start(_job(model, stream=True))
    events, t0 = [], time.monotonic()
    async for ev in run.events():
        events.append((time.monotonic() - t0, ev))
        if ev.terminal is not None:
            break
    await run.close()
    await backend.close()
    return events


@pytest.mark.device(tail_after_result_s=0.3)
def test_a_stream_tail_overtaken_by_the_terminal_record_still_arrives_first(edge_stack):
    """The terminal record lands on Redis 0.3 s before the device's last chunks reach the broker:
    the run waits for them (the grace), so every chunk, the final one included, precedes it."""
    backend, hub, device, model, live = edge_stack
    events = asyncio.run(_collect(backend, model))
    chunks = [ev.chunk for _, ev in events if ev.chunk is not None]
    assert "".join(c.delta for c in chunks) == "The answer is 42."
    assert [c.seq for c in chunks] == [0, 1, 2, 3, 4] and chunks[-1].final
    assert events[-1][1].terminal is not None and events[-1][1].terminal.status == "COMPLETED"


@pytest.mark.device(tail_after_result_s=3.0)
def test_a_stream_tail_later_than_the_grace_gives_way_to_the_terminal_record(edge_stack):
    """Past the grace the terminal record goes out with the chunks that did arrive; the relay
    completes the answer from its text (test_edge_relay covers that part)."""
    from ig3.llm.edge import STREAM_TAIL_GRACE_S

    backend, hub, device, model, live = edge_stack
    events = asyncio.run(_collect(backend, model))
    chunks = [ev.chunk for _, ev in events if ev.chunk is not None]
    assert [c.delta for c in chunks] == ["The "]
    at, last = events[-1]
    assert last.terminal is not None and last.terminal.text == "The answer is 42."
    first_chunk_at = events[0][0]
    assert at - first_chunk_at >= STREAM_TAIL_GRACE_S * 0.9  # it did wait, once, for the tail


def test_gateway_over_the_real_adapter(edge_stack, redis_url, redis_prefix):
    """Non-streaming and streaming chat through Gateway.handle with the real adapter."""
    from ig3.api.http import Principal
    from ig3.events import MemoryEventPublisher
    from ig3.llm.config import parse_config
    from ig3.llm.edge import StaticCatalogue
    from ig3.llm.gateway import Gateway
    from ig3.llm.redisguard import RedisGuard
    from ig3.llm.routing import EdgeCapacity
    from ig3.llm.usage import UsageRecorder

    backend, hub, device, model, live = edge_stack
    assert any(row["model"] == model for row in live.catalogue())

    async def go():
        async def authorize(_):
            return Principal(subject="0x" + "c" * 40, kind="apikey", key_id="k1")

        redis = RedisGuard(redis_url, timeout_s=0.5)
        gw = Gateway(config=parse_config({}), authorize=authorize, redis=redis, usage=UsageRecorder(MemoryEventPublisher()),
                     catalogue=StaticCatalogue({model: EdgeCapacity(model, devices=1, free_slots=2)}), edge=backend,
                     key_prefix=redis_prefix + "llm:")
        body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "q"}], "max_tokens": 16})
        reply = await gw.handle("chat", body, {})
        sync = orjson.loads(reply.body)
        reply = await gw.handle("chat", orjson.dumps({**orjson.loads(body), "stream": True,
                                                      "stream_options": {"include_usage": True}}), {})
        pieces = [p async for p in reply.stream]
        await redis.close()
        await backend.close()
        return sync, reply.headers, pieces

    sync, headers, pieces = asyncio.run(go())
    assert sync["choices"][0]["message"]["content"] == "The answer is 42." and sync["usage"]["completion_tokens"] == 4
    assert headers["x-ig3-route"] == "edge" and headers["x-ig3-device"] == device.thing
    events = [orjson.loads(p[6:]) for p in pieces if p.startswith(b"data: {")]
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in events if c["choices"])
    assert text == "The answer is 42." and events[-1]["usage"]["completion_tokens"] == 4
    assert pieces[-1] == b"data: [DONE]\n\n"


def test_non_streaming_waits_past_client_socket_timeouts(edge_stack):
    """The terminal record arriving after 6 s (beyond redis-py's default 5 s socket timeout)."""
    backend, hub, device, model, live = edge_stack
    device.result_delay_s = 6.0

    async def go():
        run = await backend.start(_job(model, stream=False))
        terminal = None
        async for ev in run.events():
            if ev.terminal is not None:
                terminal = ev.terminal
                break
        await run.close()
        await backend.close()
        return terminal

    t0 = time.time()
    terminal = asyncio.run(go())
    assert terminal is not None and terminal.status == "COMPLETED" and terminal.text == "The answer is 42."
    assert 6.0 <= time.time() - t0 < 20
