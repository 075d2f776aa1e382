"""The edge path: AI-gateway tasks placed on devices, their stream relayed back.

Port: ``EdgeBackend.start(job) -> EdgeRun``; an ``EdgeRun`` yields ``EdgeEvent``s — the device's
``StreamChunk``s (MQTT ``ig3/v1/tasks/{id}/stream``) and, once, the task's terminal record (the
results function's announcement on Redis). The gateway's relay policy lives in
``ig3.llm.gateway``; this module only moves data, so the relay is unit-testable with a fake run.

The adapter (``TaskServiceEdgeBackend``):
- The task id is derived before submission (``new_task_id(account, request_id)`` — the same id
  ``TaskService.submit`` derives from the idempotency key), so the stream subscription is in
  place (SUBACK received) before the task can reach a device: no chunk is missed.
- ``submit(..., dispatch_inline=True)`` places the task at once through the same scheduler and
  retry machinery as ``POST /v1/tasks`` (no SQS hop); it runs in a worker thread (boto3 is sync).
- The terminal record is awaited with ``BLMOVE`` on the key ``ig3.tasks.notify`` announces to
  (the async twin of ``notify.wait_terminal``: a blocked coroutine costs no CPU, and a
  thread per waiting request would exhaust the pool).
- ONE MQTT connection per process (``MqttStreamHub``, paho's network thread) carries every
  request's subscription; messages are handed to the event loop with ``call_soon_threadsafe``.
  On reconnect, the live subscriptions are renewed.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

import orjson

from ig3.llm.routing import EdgeCapacity
from ig3.log import logger
from ig3.wire import StreamChunk, TaskInput, TaskLimits, task_stream_topic


@dataclass(frozen=True)
class EdgeJob:
    request_id: str
    account: str
    kind: str  # chat | completion | embedding
    model: str
    input: TaskInput
    limits: TaskLimits
    stream: bool
    deadline_s: float
    key_id: str | None = None  # the API key, for its budget (the TaskService holds before work)
    key_budget: int | None = None


@dataclass(frozen=True)
class Terminal:
    """The task's end as the results function recorded it."""

    status: str  # COMPLETED | FAILED
    route: str | None = None
    device: str | None = None
    attempt: int = 0
    text: str | None = None
    finish_reason: str | None = None
    embeddings: list[list[float]] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class EdgeEvent:
    chunk: StreamChunk | None = None
    terminal: Terminal | None = None


class EdgeRun(Protocol):
    task_id: str
    device: str | None
    reason: str | None

    def events(self) -> AsyncIterator[EdgeEvent]: ...
    async def close(self) -> None: ...


class EdgeBackend(Protocol):
    async def start(self, job: EdgeJob) -> EdgeRun: ...


class EdgeCatalogue(Protocol):
    def snapshot(self) -> dict[str, EdgeCapacity]: ...


def terminal_from_task(task: Any) -> Terminal:
    """An ``ig3.tasks.model.Task`` (record or its JSON dict) -> Terminal."""
    d = task if isinstance(task, dict) else task.model_dump(mode="json")
    out = d.get("output") or {}
    usage = d.get("usage") or {}
    err = d.get("error") or {}
    status = d.get("status")
    return Terminal(status=str(getattr(status, "value", status)), route=d.get("route"), device=d.get("device"),
                    attempt=int(d.get("attempt") or 0), text=out.get("text"), finish_reason=out.get("finish_reason"),
                    embeddings=out.get("embeddings"), prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0), error_code=err.get("code"),
                    error_message=err.get("message"))


# ------------------------------------------------------------------------------------------- MQTT
class MqttStreamHub:
    """One MQTT connection per process, many per-task subscriptions."""

    def __init__(self, url: str | None = None, *, client_id: str | None = None, suback_timeout_s: float = 5.0):
        self.url = url or os.environ.get("MQTT_URL", "mqtt://127.0.0.1:1883")
        self._client_id = client_id or f"ig3-llm-{uuid.uuid4().hex[:12]}"
        self._suback_timeout = suback_timeout_s
        self._lock = threading.Lock()
        self._subs: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._pending_acks: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._connected = threading.Event()
        self._client: Any = None

    def start(self) -> None:
        if self._client is not None:
            return
        import paho.mqtt.client as mqtt

        u = urlparse(self.url)
        websockets = u.scheme == "wss"
        c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=self._client_id,
                        protocol=mqtt.MQTTv311, clean_session=True,
                        transport="websockets" if websockets else "tcp")
        if u.username:
            c.username_pw_set(u.username, u.password)
        if u.scheme in ("mqtts", "ssl", "wss"):
            c.tls_set()
        if websockets:
            # AWS IoT Core: MQTT over WebSockets, the URL presigned with the function's role (SigV4),
            # re-signed before every (re)connect because the signature and the credentials expire.
            host = u.hostname or ""
            c.ws_set_options(path=iot_presigned_path(host))
            c.on_pre_connect = lambda client, userdata: client.ws_set_options(path=iot_presigned_path(host))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.reconnect_delay_set(min_delay=1, max_delay=10)
        default_port = 443 if websockets else 8883 if u.scheme in ("mqtts", "ssl") else 1883
        c.connect_async(u.hostname or "127.0.0.1", u.port or default_port, keepalive=30)
        c.loop_start()
        self._client = c

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            logger.warning("mqtt connect refused", extra={"reason": str(reason_code)})
            return
        self._connected.set()
        with self._lock:
            topics = list(self._subs)
        for topic in topics:  # renew after a reconnect (clean session)
            client.subscribe(topic, qos=1)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected.clear()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        with self._lock:
            waiter = self._pending_acks.pop(mid, None)
        if waiter is not None:
            loop, fut = waiter
            failed = any(getattr(rc, "is_failure", False) for rc in reason_codes or [])
            loop.call_soon_threadsafe(_resolve, fut, not failed)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            sub = self._subs.get(msg.topic)
        if sub is not None:
            loop, queue = sub
            loop.call_soon_threadsafe(queue.put_nowait, msg.payload)

    async def subscribe(self, topic: str) -> asyncio.Queue:
        """Subscribe and wait for the broker's SUBACK; returns the queue of raw payloads."""
        self.start()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        if not self._connected.is_set():
            await asyncio.to_thread(self._connected.wait, self._suback_timeout)
            if not self._connected.is_set():
                raise ConnectionError("MQTT broker unreachable")
        fut = loop.create_future()
        with self._lock:
            self._subs[topic] = (loop, queue)
            rc, mid = self._client.subscribe(topic, qos=1)
            if rc == 0:
                self._pending_acks[mid] = (loop, fut)
        if rc != 0:
            self.unsubscribe(topic)
            raise ConnectionError(f"MQTT subscribe failed (rc={rc})")
        try:
            ok = await asyncio.wait_for(fut, self._suback_timeout)
        except asyncio.TimeoutError:
            self.unsubscribe(topic)
            raise ConnectionError("MQTT SUBACK timed out") from None
        if not ok:
            self.unsubscribe(topic)
            raise ConnectionError("MQTT subscription refused")
        return queue

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            self._subs.pop(topic, None)
        if self._client is not None:
            self._client.unsubscribe(topic)

    @property
    def subscriptions(self) -> int:
        return len(self._subs)


def iot_presigned_path(host: str, *, region: str | None = None, credentials: Any = None) -> str:
    """``/mqtt?X-Amz-...`` for AWS IoT Core's WebSocket endpoint (service ``iotdevicegateway``).

    IoT Core wants the session token appended after signing, not signed in the query.
    """
    from urllib.parse import quote

    import boto3
    from botocore.auth import SigV4QueryAuth
    from botocore.awsrequest import AWSRequest

    session = boto3.session.Session()
    creds = credentials or session.get_credentials().get_frozen_credentials()
    region = region or session.region_name or os.environ.get("AWS_REGION", "us-east-1")
    token = getattr(creds, "token", None)
    unsigned = type(creds)(creds.access_key, creds.secret_key, None) if token else creds
    req = AWSRequest(method="GET", url=f"https://{host}/mqtt")
    SigV4QueryAuth(unsigned, "iotdevicegateway", region, expires=300).add_auth(req)
    path = req.url.split(host, 1)[1]
    if token:
        path += "&X-Amz-Security-Token=" + quote(token, safe="")
    return path


# How long a stream whose terminal record arrived first may take to deliver its remaining chunks.
# Only spent in that race, and only until the final chunk; the relay completes the answer from
# the terminal record's text when the grace runs out (``ig3.llm.gateway._relay_edge``).
STREAM_TAIL_GRACE_S = 1.0


def _continues(chunk: StreamChunk) -> bool:
    """Whether more of the stream follows this chunk (not its final one, not an error)."""
    return not (chunk.final or chunk.error is not None)


def _resolve(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


# ---------------------------------------------------------------------------------- TaskService
class _TaskRun:
    def __init__(self, task_id: str, queue: asyncio.Queue, hub: MqttStreamHub, topic: str,
                 waiter: asyncio.Task | None, first: Terminal | None, device: str | None, reason: str | None,
                 deadline: float = float("inf"), stream: bool = False):
        self.task_id = task_id
        self._stream = stream
        self._deadline = deadline  # loop time: the iterator ends (no terminal) once it passes
        self.device = device
        self.reason = reason
        self._queue = queue
        self._hub = hub
        self._topic = topic
        self._waiter = waiter
        self._first = first

    async def events(self) -> AsyncIterator[EdgeEvent]:
        if self._first is not None:  # terminal at submission (e.g. the cloud fallback ran inline)
            yield EdgeEvent(terminal=self._first)
            return
        waiter = self._waiter
        getter: asyncio.Task | None = None
        loop = asyncio.get_running_loop()
        streaming = self._stream  # the device streams this run, and its final chunk is still to come
        try:
            while True:
                if not self._queue.empty():
                    chunk = StreamChunk.model_validate_json(self._queue.get_nowait())
                    streaming = _continues(chunk)
                    yield EdgeEvent(chunk=chunk)
                    continue
                remaining = self._deadline - loop.time()
                if remaining <= 0:
                    return  # past the deadline: the caller reports a timeout
                getter = asyncio.ensure_future(self._queue.get())
                wait = {getter} if waiter is None else {getter, waiter}
                done, _ = await asyncio.wait(wait, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    continue
                if getter in done:
                    chunk = StreamChunk.model_validate_json(getter.result())
                    getter = None
                    streaming = _continues(chunk)
                    yield EdgeEvent(chunk=chunk)
                    continue
                getter.cancel()
                getter = None
                assert waiter is not None
                try:
                    raw = waiter.result()
                except Exception:  # noqa: BLE001 — Redis out: carry on with the stream alone
                    raw = None
                waiter = None
                if raw is not None:
                    # The terminal record (device -> IoT rule -> results function -> Redis) can
                    # overtake the stream's last chunks (device -> broker -> this hub). Chunks
                    # already here come first; a stream that is mid-way gets a short grace for the
                    # rest, so the client sees the device's own chunks rather than one remainder.
                    terminal = terminal_from_task(orjson.loads(raw))
                    streaming = streaming and terminal.status == "COMPLETED"
                    grace_end = loop.time() + (STREAM_TAIL_GRACE_S if streaming else 0.0)
                    while True:
                        if self._queue.empty():
                            left = grace_end - loop.time()
                            if not streaming or left <= 0:
                                break
                            try:
                                payload = await asyncio.wait_for(self._queue.get(), left)
                            except asyncio.TimeoutError:
                                break
                        else:
                            payload = self._queue.get_nowait()
                        chunk = StreamChunk.model_validate_json(payload)
                        streaming = _continues(chunk)
                        yield EdgeEvent(chunk=chunk)
                    yield EdgeEvent(terminal=terminal)
        finally:
            if getter is not None:
                getter.cancel()

    async def close(self) -> None:
        self._hub.unsubscribe(self._topic)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()


class TaskServiceEdgeBackend:
    """Edge requests as AI-gateway tasks (``ig3.tasks.service.TaskService``)."""

    def __init__(self, service_factory: Callable[[], Any], hub: MqttStreamHub, redis_url: str):
        self._service_factory = service_factory
        self._service: Any = None
        self._hub = hub
        self._redis_url = redis_url
        self._redis: Any = None

    def _blocking_redis(self) -> Any:
        if self._redis is None:
            import redis.asyncio as aioredis

            # No socket timeout (redis-py's default is 5 s): BLMOVE blocks server-side for as long as
            # we ask, and each wait is bounded by that.
            self._redis = aioredis.Redis.from_url(self._redis_url, socket_connect_timeout=0.5, socket_timeout=None,
                                                  health_check_interval=0)
        return self._redis

    async def _wait_terminal(self, task_id: str, timeout_s: float) -> bytes | None:
        """The terminal record, waiting up to ``timeout_s``; a Redis blip is retried, not fatal."""
        from ig3.tasks.notify import KEY

        r = self._blocking_redis()
        key = KEY.format(task_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                raw = await r.lindex(key, 0)
                if raw is None:
                    # In slices: a connection that died silently is noticed within one slice.
                    raw = await asyncio.wait_for(r.blmove(key, key, min(remaining, 10.0), "LEFT", "LEFT"),
                                                 min(remaining, 10.0) + 2.0)
                if raw is not None:
                    return raw
            except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                logger.warning("terminal wait interrupted", extra={"error_type": type(exc).__name__})
                await asyncio.sleep(0.2)
            except Exception as exc:  # noqa: BLE001 — redis-py's ConnectionError/TimeoutError
                if type(exc).__module__.startswith("redis"):
                    logger.warning("terminal wait interrupted", extra={"error_type": type(exc).__name__})
                    await asyncio.sleep(0.2)
                else:
                    raise

    async def start(self, job: EdgeJob) -> _TaskRun:
        from ig3.tasks.model import Constraints, TaskSpec
        from ig3.tasks.service import new_task_id

        if self._service is None:
            self._service = await asyncio.to_thread(self._service_factory)
        task_id = new_task_id(job.account, job.request_id)
        topic = task_stream_topic(task_id)
        queue = await self._hub.subscribe(topic)
        spec = TaskSpec(kind=job.kind, model=job.model, input=job.input, limits=job.limits,
                        constraints=Constraints(prefer="auto", deadline_s=job.deadline_s), stream=job.stream)
        try:
            task = await asyncio.to_thread(self._service.submit, spec, account=job.account,
                                           idempotency_key=job.request_id, dispatch_inline=True,
                                           key_id=job.key_id, key_budget=job.key_budget)
        except BaseException:
            self._hub.unsubscribe(topic)
            raise
        status = str(getattr(task.status, "value", task.status))
        first = terminal_from_task(task) if status in ("COMPLETED", "FAILED") else None
        waiter = None
        if first is None:
            waiter = asyncio.ensure_future(self._wait_terminal(task_id, job.deadline_s))
        decision = getattr(task, "decision", None) or {}
        reason = decision.get("reason") if isinstance(decision, dict) else None
        deadline = asyncio.get_running_loop().time() + job.deadline_s + 5.0
        return _TaskRun(task_id, queue, self._hub, topic, waiter, first, task.device, reason, deadline,
                        stream=job.stream)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


# -------------------------------------------------------------------------------- live capacity
class LiveCatalogue:
    """The scheduler's live catalogue, refreshed in the background (never read on the request path).

    ``LiveState.catalogue()`` reports devices and free slots per model; generation speed and
    context are not in it yet, so they come from ``IG3_EDGE_TOKENS_PER_S`` / ``IG3_EDGE_CTX``
    until the catalogue carries them (an entry's own ``tokens_per_s``/``ctx`` win when present).
    """

    # A model the fleet served within this long stays known with zero devices: a request for it is
    # a retryable 503 ``no_capacity`` (fleet briefly gone, Redis out), not a 404 ``model_not_found``.
    KNOWN_S = 3600.0

    def __init__(self, source: Callable[[], list[dict]], *, refresh_s: float = 1.0):
        self._source = source
        self._refresh_s = refresh_s
        self._snapshot: dict[str, EdgeCapacity] = {}
        self._known: dict[str, tuple[float, EdgeCapacity]] = {}  # model -> (last seen online, its entry)
        self._task: asyncio.Task | None = None
        self.tokens_per_s = float(os.environ.get("IG3_EDGE_TOKENS_PER_S", "20"))
        self.ctx = int(os.environ.get("IG3_EDGE_CTX", "2048"))
        self.kinds = frozenset(os.environ.get("IG3_EDGE_KINDS", "chat,completion").split(","))
        self.updated_at = 0.0

    def snapshot(self) -> dict[str, EdgeCapacity]:
        return self._snapshot

    def _convert(self, rows: list[dict]) -> dict[str, EdgeCapacity]:
        out = {}
        for r in rows:
            out[r["model"]] = EdgeCapacity(
                model=r["model"], devices=int(r.get("devices", 0)), free_slots=int(r.get("free_capacity", 0)),
                queued=int(r.get("queued", 0)), tokens_per_s=float(r.get("tokens_per_s") or self.tokens_per_s),
                ctx=int(r.get("ctx") or self.ctx), kinds=frozenset(r.get("kinds") or self.kinds))
        return out

    async def refresh(self) -> None:
        try:
            rows = await asyncio.to_thread(self._source)
        except Exception as exc:  # noqa: BLE001 — keep the last snapshot; Redis may be out
            logger.warning("edge catalogue refresh failed", extra={"error_type": type(exc).__name__})
            if time.time() - self.updated_at > 30:
                self._snapshot = self._with_known({})  # too old to trust: route to the cloud
            return
        now = time.time()
        snap = self._convert(rows)
        for name, cap in snap.items():
            if cap.devices > 0:
                self._known[name] = (now, cap)
        self._snapshot = self._with_known(snap, now)
        self.updated_at = now

    def _with_known(self, snap: dict[str, EdgeCapacity], now: float | None = None) -> dict[str, EdgeCapacity]:
        now = time.time() if now is None else now
        for name, (seen, cap) in list(self._known.items()):
            if now - seen > self.KNOWN_S:
                del self._known[name]
            elif name not in snap:
                snap[name] = dataclasses.replace(cap, devices=0, free_slots=0, queued=0)
        return snap

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        for _ in itertools.count():
            await asyncio.sleep(self._refresh_s)
            await self.refresh()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class StaticCatalogue:
    """A fixed capacity table (tests, benchmarks, a deployment without edge devices)."""

    def __init__(self, entries: dict[str, EdgeCapacity] | None = None):
        self.entries = entries or {}

    def snapshot(self) -> dict[str, EdgeCapacity]:
        return self.entries
