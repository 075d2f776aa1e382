"""Pub/sub over HTTP for the local front: Server-Sent Events bridged from the MQTT broker, and the dashboard.

Routes (mounted by ``ig3.local.front.LocalApiGateway``):
- ``GET /v1/events/stream`` — the network summary (``event: summary``), at most one a second, the
  latest first on connect. Same credentials as the HTTP API (``Authorization: Bearer <jwt|api key>``,
  or ``?token=`` for clients that cannot set headers, e.g. ``EventSource``).
- ``GET /v1/tasks/{id}/events`` — one task of the caller's own: ``event: task`` (the public record
  on every status change, the last one terminal), ``event: chunk`` (its stream, as the device
  publishes it). Another caller's task is a 404, exactly like ``GET /v1/tasks/{id}``.
- ``GET /dashboard/`` — the single-page dashboard (static files, no auth: its data needs a key).

Design decisions:
- **One broker subscription per topic, not per viewer.** A single MQTT client subscribes to
  ``ig3/v1/network/summary`` and, ref-counted, to the stream topic of each task someone watches;
  messages fan out to per-connection asyncio queues. The same topics are what MQTT clients use in
  AWS (IoT Core, custom authorizer in ``ig3.pubsub.authz``); SSE is the local, HTTP-only way in.
- **Slow viewers never back up anything.** A viewer's summary queue holds one item (the newest
  replaces an unread older one); a task's chunk queue is bounded and a viewer that falls behind gets
  ``event: lagged`` and the terminal record later, never an unbounded buffer.
- Task status comes from the task record (the tasks table), read when the network feed mentions
  the task and otherwise every ``TASK_POLL_S`` — bounded, one read per watcher per interval.
"""
from __future__ import annotations

import asyncio
import mimetypes
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson

from ig3.errors import DomainError, NotFound, Unauthorized, error_body
from ig3.observability import logger
from ig3.pubsub.authz import NETWORK_SUMMARY_TOPIC, TASK_ID_RE, task_stream_topic

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"
TASK_EVENTS_RE = re.compile(r"^/v1/tasks/([^/]+)/events$")
KEEPALIVE_S = 15.0
TASK_POLL_S = 2.0
CHUNK_QUEUE = 1000
TERMINAL = ("COMPLETED", "FAILED")


class MqttFanout:
    """One MQTT client; topic -> the asyncio queues of the viewers watching it."""

    def __init__(self, mqtt_url: str, summary_topic: str = NETWORK_SUMMARY_TOPIC):
        from ig3.local.iot import mqtt_client

        self.summary_topic = summary_topic
        self._lock = threading.Lock()
        self._watchers: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = {}
        self.latest_summary: bytes | None = None
        self._client = mqtt_client(mqtt_url, "sse-bridge")
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        with self._lock:
            topics = list(self._watchers) + [self.summary_topic]
        for t in set(topics):  # (re)subscribe after every (re)connect
            client.subscribe(t, qos=0)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if msg.topic == self.summary_topic:
            self.latest_summary = msg.payload
        with self._lock:
            watchers = list(self._watchers.get(msg.topic, ()))
        for loop, q in watchers:
            loop.call_soon_threadsafe(_offer, q, msg.payload)

    def watch(self, topic: str, q: asyncio.Queue) -> None:
        entry = (asyncio.get_running_loop(), q)
        with self._lock:
            first = topic not in self._watchers
            self._watchers.setdefault(topic, set()).add(entry)
        if first and topic != self.summary_topic:
            self._client.subscribe(topic, qos=1)

    def unwatch(self, topic: str, q: asyncio.Queue) -> None:
        with self._lock:
            entries = self._watchers.get(topic)
            if not entries:
                return
            entries.discard((asyncio.get_running_loop(), q))
            last = not entries
            if last:
                del self._watchers[topic]
        if last and topic != self.summary_topic:
            self._client.unsubscribe(topic)

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _offer(q: asyncio.Queue, item: Any) -> None:
    """Put without ever blocking the broker thread: a full one-slot queue keeps the newest item."""
    if q.maxsize == 1 and q.full():
        q.get_nowait()
    try:
        q.put_nowait(item)
    except asyncio.QueueFull:
        q.lagged = True  # type: ignore[attr-defined]  # the reader tells its viewer (event: lagged)


class LocalPubSubFront:
    def __init__(self, fanout: MqttFanout, authorize: Callable[[str | None, str], Any],
                 task_reader: Callable[[str], Any]):
        self._fanout, self._authorize, self._read_task = fanout, authorize, task_reader

    @staticmethod
    def handles(path: str) -> bool:
        return path == "/dashboard" or path.startswith("/dashboard/") or path == "/v1/events/stream" \
            or TASK_EVENTS_RE.match(path) is not None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path, method = scope["path"], scope["method"]
        try:
            if path == "/dashboard" or path.startswith("/dashboard/"):
                return await self._static(send, path, method)
            if method != "GET":
                return await _json(send, 405, error_body(405, "invalid_request_error",
                                                         f"{method} is not allowed on {path}", "method_not_allowed"))
            principal = await self._principal(scope)
            if path == "/v1/events/stream":
                return await self._network(receive, send)
            task_id = TASK_EVENTS_RE.match(path).group(1)  # type: ignore[union-attr]
            return await self._task(receive, send, task_id, principal.subject)
        except DomainError as exc:
            await _json(send, exc.status, exc.body(), exc.headers)

    async def _principal(self, scope: dict[str, Any]) -> Any:
        token = None
        for k, v in scope.get("headers", []):
            if k == b"authorization":
                scheme, _, rest = v.decode("latin-1").partition(" ")
                token = rest.strip() if scheme.lower() == "bearer" else None
        if token is None:
            qs = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            token = (qs.get("token") or [None])[-1]
        if not token:
            raise Unauthorized("missing bearer token", code="missing_token")
        return await asyncio.get_running_loop().run_in_executor(None, self._authorize, token, "user")

    # -- network summary ---------------------------------------------------------------

    async def _network(self, receive: Any, send: Any) -> None:
        q: asyncio.Queue = asyncio.Queue(maxsize=1)
        self._fanout.watch(self._fanout.summary_topic, q)
        try:
            await _start_sse(send)
            if self._fanout.latest_summary is not None:
                await _event(send, "summary", self._fanout.latest_summary)
            gone = asyncio.ensure_future(_disconnected(receive))
            while not gone.done():
                got = asyncio.ensure_future(q.get())
                done, _ = await asyncio.wait({got, gone}, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED)
                if got in done:
                    await _event(send, "summary", got.result())
                else:
                    got.cancel()
                    if not gone.done():
                        await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
        finally:
            self._fanout.unwatch(self._fanout.summary_topic, q)

    # -- one task ------------------------------------------------------------------------

    async def _task(self, receive: Any, send: Any, task_id: str, subject: str) -> None:
        if not TASK_ID_RE.match(task_id):
            raise NotFound(f"no task {task_id}", code="task_not_found")
        loop = asyncio.get_running_loop()
        task = await loop.run_in_executor(None, self._read_task, task_id)
        if task is None or task.account != subject:
            raise NotFound(f"no task {task_id}", code="task_not_found")
        chunks: asyncio.Queue = asyncio.Queue(maxsize=CHUNK_QUEUE)
        summaries: asyncio.Queue = asyncio.Queue(maxsize=1)
        topic = task_stream_topic(task_id)
        self._fanout.watch(topic, chunks)
        self._fanout.watch(self._fanout.summary_topic, summaries)
        try:
            await _start_sse(send)
            last = task.public_view()
            await _event(send, "task", orjson.dumps(last))
            gone = asyncio.ensure_future(_disconnected(receive))
            while not gone.done() and last["status"] not in TERMINAL:
                got_chunk = asyncio.ensure_future(chunks.get())
                got_summary = asyncio.ensure_future(summaries.get())
                done, _ = await asyncio.wait({got_chunk, got_summary, gone}, timeout=TASK_POLL_S,
                                             return_when=asyncio.FIRST_COMPLETED)
                for f in (got_chunk, got_summary):
                    if f not in done:
                        f.cancel()
                if got_chunk in done:
                    await _event(send, "chunk", got_chunk.result())
                    while not chunks.empty():
                        await _event(send, "chunk", chunks.get_nowait())
                    if getattr(chunks, "lagged", False):
                        chunks.lagged = False  # type: ignore[attr-defined]
                        await _event(send, "lagged", b"{}")
                    continue
                if got_summary in done and task_id.encode() not in got_summary.result():
                    continue  # the network moved on without this task: nothing to read
                fresh = await loop.run_in_executor(None, self._read_task, task_id)
                view = fresh.public_view() if fresh is not None else None
                if view is not None and (view["status"], view.get("attempt"), view.get("device")) != \
                        (last["status"], last.get("attempt"), last.get("device")):
                    last = view
                    await _event(send, "task", orjson.dumps(view))
            if not gone.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self._fanout.unwatch(topic, chunks)
            self._fanout.unwatch(self._fanout.summary_topic, summaries)

    # -- the dashboard's files -----------------------------------------------------------

    async def _static(self, send: Any, path: str, method: str) -> None:
        if method not in ("GET", "HEAD"):
            return await _json(send, 405, error_body(405, "invalid_request_error",
                                                     f"{method} is not allowed on {path}", "method_not_allowed"))
        if path == "/dashboard":
            await send({"type": "http.response.start", "status": 308,
                        "headers": [(b"location", b"/dashboard/"), (b"content-length", b"0")]})
            return await send({"type": "http.response.body", "body": b""})
        rel = path[len("/dashboard/"):] or "index.html"
        target = (DASHBOARD_DIR / rel).resolve()
        if DASHBOARD_DIR not in target.parents or not target.is_file():
            raise NotFound(f"no file {rel}", code="not_found")
        data = target.read_bytes()
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "image/svg+xml"):
            ctype += "; charset=utf-8"
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", ctype.encode()), (b"content-length", str(len(data)).encode()),
            (b"cache-control", b"no-cache"),
            # No third-party anything: the page talks to this origin only.
            (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                         b"script-src 'self'; connect-src 'self'; frame-ancestors 'none'"),
            (b"x-content-type-options", b"nosniff")]})
        await send({"type": "http.response.body", "body": data if method == "GET" else b""})


async def _disconnected(receive: Any) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return


async def _start_sse(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
        (b"x-accel-buffering", b"no")]})


async def _event(send: Any, name: str, data: bytes) -> None:
    # JSON payloads are one line (orjson never emits raw newlines), so one data: field is enough.
    body = b"event: " + name.encode() + b"\ndata: " + data.replace(b"\n", b"") + b"\n\n"
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _json(send: Any, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    data = orjson.dumps(body)
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    hdrs += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": data})


def build(mqtt_url: str, authorize: Callable[[str | None, str], Any]) -> tuple[LocalPubSubFront, Callable[[], None]]:
    """The front for the local cloud (its environment names the tasks table), and its stop function."""
    from ig3 import config
    from ig3.tasks.store import DynamoTaskStore

    store = DynamoTaskStore(config.table_name("tasks"))
    fanout = MqttFanout(mqtt_url)
    logger.debug("local pub/sub front ready")
    return LocalPubSubFront(fanout, authorize, store.get), fanout.stop
