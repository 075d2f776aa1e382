"""Embeddings served by the network: the collections service's ``TaskEmbedder`` submits
``embedding`` tasks to the real TaskService (DynamoDB + SQS in moto, the scheduler's live state
in real Redis), which places them on an M1 whose heartbeat declares an embedding model; the
device (a stand-in on the real Mosquitto, computing with the real all-MiniLM-L6-v2) receives the
task on its topic and reports the result the results function applies. Retrieval quality is then
measured on what the network computed."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from ig3.rag.models import AddDocuments, CreateCollection, Query
from ig3.wire import (
    DeviceLoad,
    DeviceResult,
    DeviceTask,
    Heartbeat,
    ModelInfo,
    TaskOutput,
    Usage,
    device_tasks_topic,
)

from .conftest import make_store
from .test_collections_api import CORPUS, QUESTIONS

pytestmark = pytest.mark.integration


class EmbeddingDevice:
    """An M1 serving an embedding model: tasks arrive over MQTT, results go to the results path."""

    def __init__(self, url: str, thing: str, service, model):
        import paho.mqtt.client as mqtt

        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.thing, self.service, self.model = thing, service, model
        self.tasks: list[DeviceTask] = []
        self.c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=thing)
        self.c.on_message = lambda c, u, msg: threading.Thread(
            target=self._work, args=(msg.payload,), daemon=True
        ).start()
        self.c.connect(host, int(port))
        self.c.subscribe(device_tasks_topic(thing), qos=1)
        self.c.loop_start()
        time.sleep(0.2)

    def _work(self, payload: bytes) -> None:
        task = DeviceTask.model_validate_json(payload)
        self.tasks.append(task)
        emb = self.model.embed(self.model.name, task.input.texts, account="device")
        # The results function's work (IoT rule -> SQS -> handle_result + the Redis announcement).
        self.service.handle_result(
            DeviceResult(
                task_id=task.id,
                attempt=task.attempt,
                thing=self.thing,
                status="ok",
                output=TaskOutput(embeddings=emb.vectors),
                usage=Usage(prompt_tokens=emb.tokens),
            )
        )

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def network(aws_env, redis_url, redis_prefix, mqtt_url, minilm):
    import redis as redis_lib

    from ig3.config import DispatchSettings, queue_url, table_name
    from ig3.events import MemoryEventPublisher
    from ig3.scheduler import LiveState, Scheduler
    from ig3.tasks.notify import RedisTerminalNotifier, wait_terminal
    from ig3.tasks.placement import SchedulerPlacer
    from ig3.tasks.queue import SqsTaskQueue
    from ig3.tasks.service import TaskService
    from ig3.tasks.store import DynamoTaskStore
    from tests.llm.test_edge_mqtt import MqttIot

    r = redis_lib.Redis.from_url(redis_url)
    live = LiveState(r, prefix=redis_prefix)
    thing = "m1-" + uuid.uuid4().hex[:8]
    live.apply_heartbeats(
        [
            Heartbeat(
                thing=thing,
                ts=time.time(),
                load=DeviceLoad(capacity=4),
                models=[ModelInfo(name="all-MiniLM-L6-v2", kinds=["embedding"])],
            )
        ]
    )
    iot = MqttIot(mqtt_url)
    events = MemoryEventPublisher()
    service = TaskService(
        store=DynamoTaskStore(table_name("tasks")),
        placer=SchedulerPlacer(Scheduler(live), live),
        iot=iot,
        queue=SqsTaskQueue(queue_url("tasks"), queue_url("timeouts")),
        events=events,
        notifier=RedisTerminalNotifier(r),
        settings=DispatchSettings(edge_attempts=2, cloud_attempts=0),
    )
    device = EmbeddingDevice(mqtt_url, thing, service, minilm)
    yield service, lambda task_id, s: wait_terminal(r, task_id, s), device, events
    device.close()
    iot.close()


def test_ingest_and_query_with_embeddings_computed_on_the_edge(network, qdrant_path, rag_bucket):
    from ig3.config import table_name
    from ig3.events import MemoryEventPublisher
    from ig3.rag.embedders import TaskEmbedder
    from ig3.rag.registry import DynamoRegistry
    from ig3.rag.service import CollectionsService

    service, wait, device, task_events = network
    rag_events = MemoryEventPublisher()
    rag = CollectionsService(
        DynamoRegistry(table_name("rag_collections")),
        {"faiss": make_store("faiss", qdrant_path, rag_bucket)},
        TaskEmbedder(service, wait, timeout_s=20, max_items=4),
        rag_events,
    )
    owner = "0x" + uuid.uuid4().hex + uuid.uuid4().hex[:8]
    rag.create(
        owner, CreateCollection(name="kb", embedding_model="all-MiniLM-L6-v2", dimension=384, store="faiss")
    )
    out = rag.add_documents(
        owner,
        "kb",
        AddDocuments.model_validate({"documents": [{"id": k, "text": v} for k, v in CORPUS.items()]}),
    )
    assert out["chunks"] == 10 and len(out["embedding_tasks"]) == 3  # batches of 4, 4, 2 texts
    assert all(t.kind == "embedding" and t.model == "all-MiniLM-L6-v2" for t in device.tasks)
    hits = sum(rag.search(owner, "kb", Query(query=q, top_k=3))[0].payload["doc"] == a for q, a in QUESTIONS)
    assert hits / len(QUESTIONS) >= 0.8
    assert len(device.tasks) == 3 + len(QUESTIONS)
    # billed on the task path (each task's own completion), so RAG emits no second UsageRecorded
    from ig3.billing.models import UsageRecorded

    usage = [
        UsageRecorded.model_validate(e.detail) for e in task_events.events if e.detail_type == "UsageRecorded"
    ]
    assert len(usage) == 3 + len(QUESTIONS)
    assert all(
        u.kind == "embedding" and u.account == owner and u.route == "edge" and u.prompt_tokens > 0
        for u in usage
    )
    assert not [e for e in rag_events.events if e.detail_type == "UsageRecorded"]
    assert [e.detail["vectors"] for e in rag_events.events if e.detail_type == "RagStorageChanged"] == [10]
