"""The agent: tasks in, stream chunks and signed results out, heartbeats, graceful shutdown.

It owns no I/O of its own: the transport (MQTT, Greengrass IPC, Greengrass v1), the backend
(llama.cpp, an OpenAI-compatible server) and the signer are injected, so tests and the three
deployment shapes share this one code path.

Design decisions:
- Transport callbacks only parse and enqueue; the work runs on the executor's threads.
- Every task gets exactly one answer on ``.../results``: ok, error (malformed, unknown model,
  overloaded, deadline, cancelled, internal) or released (shutdown). A task that cannot be
  parsed far enough to know its id and attempt cannot be answered and is logged and dropped.
- At-least-once delivery: a duplicate of a task that is queued or running is ignored; a
  duplicate of a task answered recently gets the same (signed) result again.
- Streaming: the first token is published at once (time to first token); later tokens are
  optionally merged per ``stream_coalesce_ms`` window to respect IoT Core's 100 publishes/s per
  connection. ``seq`` counts chunks from 0; the last chunk has ``final=True`` and the usage.
- Heartbeats: every ``heartbeat_s`` and on change (load, models, status), at most one per
  ``heartbeat_min_gap_s``, so a burst of tasks does not become a burst of heartbeats. An
  on-change heartbeat also waits ``HEARTBEAT_SETTLE_S`` after the change: a task start is such a
  change, and building and publishing a heartbeat (psutil, JSON, a publish) at that moment
  competes for the GIL with the task's path to its first token.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import OrderedDict
from typing import Any, TextIO

from pydantic import ValidationError

from ig3 import wire
from ig3.wire import (
    DeviceLoad,
    DeviceResult,
    DeviceTask,
    Heartbeat,
    Location,
    ResultError,
    StreamChunk,
    TaskCancel,
    TaskOutput,
    Usage,
)
from ig3_edge.backends.base import Backend, Generation, TaskError
from ig3_edge.config import AgentConfig
from ig3_edge.executor import Executor, Job
from ig3_edge.signing import ResultSigner
from ig3_edge.telemetry import Ewma, SystemLoad
from ig3_edge.transports.base import Transport

log = logging.getLogger("ig3_edge.agent")
# Settle time of an on-change heartbeat (see the module docstring): past a task's set-up in
# Python (parse, submit, prompt template), into llama.cpp's prompt evaluation, which releases
# the GIL; far shorter than the scheduler needs the news.
HEARTBEAT_SETTLE_S = 0.05

RECENT_RESULTS = 512  # answered tasks remembered for redeliveries ...
RECENT_BYTES = 8 << 20  # ... within this many bytes (an embeddings answer can be 100 KB)


class Agent:
    def __init__(self, config: AgentConfig, transport: Transport, backend: Backend,
                 signer: ResultSigner | None = None, out: TextIO | None = None):
        self.cfg = config
        self.transport = transport
        self.backend = backend
        self.signer = signer
        self.out = out if out is not None else sys.stdout
        self.thing = config.thing
        self.tasks_topic = wire.device_tasks_topic(self.thing)
        self.cancel_topic = wire.device_cancel_topic(self.thing)
        self.results_topic = wire.device_results_topic(self.thing)
        self.heartbeat_topic = wire.device_heartbeat_topic(self.thing)
        self.executor = Executor(config.capacity, config.max_queue, self._run_job, self._changed)
        self.tps = Ewma()
        self.model_tps: dict[str, Ewma] = {}
        self.sysload = SystemLoad()
        self.status = "online"
        self._recent: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._recent_bytes = 0
        self._recent_lock = threading.Lock()
        self._hb_cond = threading.Condition()
        self._hb_dirty = False
        self._hb_last_key: Any = None
        self._hb_last_ts = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.counters = {"tasks": 0, "ok": 0, "error": 0, "released": 0, "overloaded": 0, "dropped": 0}

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self.backend.refresh()
        if self.cfg.warmup:
            for info in self.backend.models():
                self._warm(info.name)
        self.transport.connect()
        self.transport.subscribe(self.tasks_topic, self._on_task, qos=1)
        self.transport.subscribe(self.cancel_topic, self._on_cancel, qos=1)
        self._publish_heartbeat(force=True)
        self.transport.flush(5.0)
        for target, name in ((self._heartbeat_loop, "ig3-heartbeat"), (self._scan_loop, "ig3-scan")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        models = ",".join(m.name for m in self.backend.models()) or "-"
        print(f"agent ready thing={self.thing} transport={self.transport.name} models={models} "
              f"capacity={self.cfg.capacity} signer={self.signer.address if self.signer else '-'}",
              file=self.out, flush=True)

    def _warm(self, model: str) -> None:
        t0 = time.perf_counter()
        try:
            self.backend.warmup(model)
            log.info("warmed up %s in %.0f ms", model, (time.perf_counter() - t0) * 1000)
        except Exception as exc:  # a broken model file must not keep the others from serving
            log.warning("warm-up of %s failed: %s", model, exc)

    def shutdown(self, drain_s: float | None = None) -> None:
        """Stop taking work, let running tasks finish for ``drain_s``, release the rest, exit clean."""
        if self._stop.is_set():
            return
        grace = self.cfg.drain_s if drain_s is None else drain_s
        self.status = "draining"
        try:
            self.transport.unsubscribe(self.tasks_topic)
        except Exception as exc:  # the broker may be gone; we still release what we hold
            log.warning("unsubscribe failed during shutdown: %s", exc)
        self._publish_heartbeat(force=True)
        queued, running = self.executor.drain(grace)
        for job in queued:
            self._publish_result(self._released(job.task))
        for job in running:
            job.stop("released")  # the worker publishes the released result itself
        self.executor.wait_idle(10.0)
        self._stop.set()
        with self._hb_cond:
            self._hb_cond.notify_all()
        self.executor.stop()
        if not self.transport.flush(10.0):
            log.warning("some results were not acknowledged by the broker before shutdown")
        self.transport.close()
        self.backend.close()
        log.info("agent stopped: %s", self.counters)

    # -- inbound ----------------------------------------------------------------------------
    def _on_task(self, topic: str, payload: bytes) -> None:
        self.counters["tasks"] += 1
        try:
            task = DeviceTask.model_validate_json(payload)
        except ValidationError as exc:
            self._reject_malformed(payload, exc)
            return
        key = (task.id, task.attempt)
        with self._recent_lock:
            cached = self._recent.get(key)
        if cached is not None:  # redelivery of an answered task: same answer again
            self.transport.publish(self.results_topic, cached, qos=1)
            return
        if self.executor.find(task.id, task.attempt):
            return  # redelivery of a task we hold
        if self.status != "online":
            self._publish_result(self._released(task))
            return
        problem = self._precheck(task)
        if problem is not None:
            self._publish_result(self._error(task, problem))
            return
        if not self.executor.submit(Job(task)):
            self.counters["overloaded"] += 1
            self._publish_result(self._error(task, TaskError(
                "overloaded", f"device at capacity ({self.cfg.capacity} running, {self.cfg.max_queue} queued)",
                retryable=True)))

    def _reject_malformed(self, payload: bytes, exc: Exception) -> None:
        try:
            raw = json.loads(payload)
        except ValueError:
            raw = None
        task_id = raw.get("id") if isinstance(raw, dict) else None
        attempt = raw.get("attempt") if isinstance(raw, dict) else None
        if not (isinstance(task_id, str) and wire.TASK_ID_RE.match(task_id)
                and isinstance(attempt, int) and not isinstance(attempt, bool) and attempt >= 1):
            self.counters["dropped"] += 1
            log.warning("dropped a task message that has no valid id/attempt (%d bytes)", len(payload))
            return
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                            for e in getattr(exc, "errors", lambda: [])()[:5]) or str(exc)
        self._publish_result(self._signed(DeviceResult(
            task_id=task_id, attempt=attempt, thing=self.thing, status="error",
            error=ResultError(code="bad_task", message=message[:1000], retryable=False))))

    def _precheck(self, task: DeviceTask) -> TaskError | None:
        if task.deadline <= time.time():
            return TaskError("deadline_exceeded", "the task's deadline passed before it arrived", retryable=True)
        info = next((m for m in self.backend.models() if m.name == task.model), None)
        if info is None:
            return TaskError("model_not_found", f"model {task.model!r} is not on this device", retryable=True)
        if task.model_hash and info.sha256 and task.model_hash != info.sha256:
            return TaskError("model_not_found", f"model {task.model!r} here has another hash", retryable=True)
        if task.kind not in info.kinds:
            return TaskError("unsupported_kind", f"model {task.model!r} does not do {task.kind}")
        inp = task.input
        given = {"chat": inp.messages, "completion": inp.prompt, "embedding": inp.texts}
        if given[task.kind] is None or (task.kind != "completion" and not given[task.kind]):
            field = {"chat": "messages", "completion": "prompt", "embedding": "texts"}[task.kind]
            return TaskError("bad_task", f"a {task.kind} task needs input.{field}")
        return None

    def _on_cancel(self, topic: str, payload: bytes) -> None:
        try:
            cancel = TaskCancel.model_validate_json(payload)
        except ValidationError:
            log.warning("ignored a malformed cancel message (%d bytes)", len(payload))
            return
        for job in self.executor.find(cancel.task_id, cancel.attempt):
            job.stop("cancelled")

    # -- work -------------------------------------------------------------------------------
    def _run_job(self, job: Job) -> None:
        task = job.task
        stream = _Stream(self, task) if task.stream else None

        def should_stop() -> str | None:
            if job.cancel.is_set():
                return "cancelled"
            if time.time() >= task.deadline:
                return "deadline"
            return None

        try:
            early = should_stop()
            if early == "deadline":
                raise TaskError("deadline_exceeded", "the deadline passed while the task was queued",
                                retryable=True)
            if early == "cancelled" and job.cancel_reason != "released":
                raise TaskError("cancelled", "cancelled before it started")
            if early is None and task.kind == "embedding":
                emb = self.backend.embed(task.model, list(task.input.texts or []))
                usage = Usage(prompt_tokens=emb.prompt_tokens, duration_ms=round(emb.duration_ms, 3))
                result = self._ok(task, TaskOutput(embeddings=emb.vectors), usage)
            elif early is None:
                gen = self.backend.generate(
                    task.model,
                    messages=list(task.input.messages) if task.kind == "chat" else None,
                    prompt=task.input.prompt if task.kind == "completion" else None,
                    limits=task.limits,
                    on_delta=stream.delta if stream else (lambda _d: None),
                    should_stop=should_stop,
                )
                result = self._generation_result(task, gen, job)
            else:
                result = None
            if job.cancel_reason == "released" or (result is None and early == "cancelled"):
                result = self._released(task)
        except TaskError as exc:
            result = self._error(task, exc)
        except Exception as exc:  # an engine failure becomes an answer, never a dead worker
            log.exception("task %s failed", task.id)
            result = self._error(task, TaskError("internal", f"{type(exc).__name__}: {exc}", retryable=True))
        if stream is not None:
            stream.final(result)
        self._publish_result(result)

    def _generation_result(self, task: DeviceTask, gen: Generation, job: Job) -> DeviceResult:
        usage = Usage(
            prompt_tokens=gen.prompt_tokens,
            completion_tokens=gen.completion_tokens,
            ttft_ms=round(gen.ttft_ms, 3) if gen.ttft_ms is not None else None,
            duration_ms=round(gen.duration_ms, 3),
            tokens_per_s=round(gen.tokens_per_s, 2) if gen.tokens_per_s else None,
        )
        if gen.tokens_per_s:
            self.tps.add(gen.tokens_per_s)
            self.model_tps.setdefault(task.model, Ewma()).add(gen.tokens_per_s)
        output = TaskOutput(text=gen.text, finish_reason=gen.finish_reason)
        if gen.finish_reason == "deadline":
            return self._error(task, TaskError("deadline_exceeded", "stopped at the task's deadline",
                                               retryable=True), output=output, usage=usage)
        if gen.finish_reason == "cancelled" and job.cancel_reason != "released":
            return self._error(task, TaskError("cancelled", "cancelled by the cloud"), output=output, usage=usage)
        return self._ok(task, output, usage)

    # -- results ----------------------------------------------------------------------------
    def _ok(self, task: DeviceTask, output: TaskOutput, usage: Usage) -> DeviceResult:
        return self._signed(DeviceResult(task_id=task.id, attempt=task.attempt, thing=self.thing, status="ok",
                                         output=output, usage=usage, model_hash=self.backend.model_hash(task.model)))

    def _error(self, task: DeviceTask, exc: TaskError, *, output: TaskOutput | None = None,
               usage: Usage | None = None) -> DeviceResult:
        return self._signed(DeviceResult(
            task_id=task.id, attempt=task.attempt, thing=self.thing, status="error", output=output, usage=usage,
            error=ResultError(code=exc.code, message=exc.message[:1000], retryable=exc.retryable),
            model_hash=self.backend.model_hash(task.model)))

    def _released(self, task: DeviceTask) -> DeviceResult:
        return self._signed(DeviceResult(
            task_id=task.id, attempt=task.attempt, thing=self.thing, status="released",
            error=ResultError(code="released", message="the device is shutting down", retryable=True)))

    def _signed(self, result: DeviceResult) -> DeviceResult:
        return self.signer.sign(result) if self.signer else result

    def _publish_result(self, result: DeviceResult) -> None:
        body = result.model_dump_json(exclude_none=True).encode()
        if len(body) > wire.MAX_MESSAGE_BYTES:
            result = self._signed(DeviceResult(
                task_id=result.task_id, attempt=result.attempt, thing=self.thing, status="error",
                usage=result.usage, model_hash=result.model_hash,
                error=ResultError(code="result_too_large",
                                  message=f"result is {len(body)} bytes; the limit is {wire.MAX_MESSAGE_BYTES}")))
            body = result.model_dump_json(exclude_none=True).encode()
        self.counters[result.status] = self.counters.get(result.status, 0) + 1
        if result.status != "released":
            with self._recent_lock:
                old = self._recent.pop((result.task_id, result.attempt), None)
                self._recent_bytes += len(body) - (len(old) if old else 0)
                self._recent[(result.task_id, result.attempt)] = body
                while len(self._recent) > RECENT_RESULTS or self._recent_bytes > RECENT_BYTES:
                    self._recent_bytes -= len(self._recent.popitem(last=False)[1])
        self.transport.publish(self.results_topic, body, qos=1)

    # -- heartbeat & discovery ----------------------------------------------------------------
    def _changed(self) -> None:
        with self._hb_cond:
            self._hb_dirty = True
            self._hb_cond.notify()

    def heartbeat(self) -> Heartbeat:
        models = [m.model_copy(update={"tokens_per_s": round(e.value, 2)})
                  if (e := self.model_tps.get(m.name)) and e.value else m
                  for m in self.backend.models()]
        loc = Location(lat=self.cfg.lat, lon=self.cfg.lon) if self.cfg.lat is not None and self.cfg.lon is not None \
            else None
        return Heartbeat(
            thing=self.thing, ts=time.time(), version=self.cfg.version, region=self.cfg.region, location=loc,
            load=DeviceLoad(in_flight=self.executor.in_flight, queued=self.executor.queued,
                            capacity=self.cfg.capacity),
            tokens_per_s=round(self.tps.value, 2) if self.tps.value else None,
            cpu_percent=self.sysload.cpu_percent(), mem_percent=self.sysload.mem_percent(),
            models=models, status=self.status,  # type: ignore[arg-type]
        )

    def _publish_heartbeat(self, force: bool = False) -> bool:
        hb = self.heartbeat()
        key = (hb.load, tuple((m.name, m.sha256) for m in hb.models), hb.status)
        if not force and key == self._hb_last_key:
            return False
        self._hb_last_key = key
        self._hb_last_ts = time.monotonic()
        self.transport.publish(self.heartbeat_topic, hb.model_dump_json(exclude_none=True).encode(), qos=1)
        return True

    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            with self._hb_cond:
                due = self._hb_last_ts + self.cfg.heartbeat_s
                while not self._hb_dirty and not self._stop.is_set() and time.monotonic() < due:
                    self._hb_cond.wait(due - time.monotonic())
                dirty, self._hb_dirty = self._hb_dirty, False
            if self._stop.is_set():
                return
            gap = self._hb_last_ts + self.cfg.heartbeat_min_gap_s - time.monotonic()
            if dirty:
                # Coalesce a burst of changes into one heartbeat, and let a task that just started
                # reach its first token before the heartbeat is built.
                self._stop.wait(max(gap, HEARTBEAT_SETTLE_S))
            try:
                self._publish_heartbeat(force=time.monotonic() >= due)
            except Exception:
                log.exception("heartbeat failed")

    def _scan_loop(self) -> None:
        while not self._stop.wait(self.cfg.scan_interval_s):
            try:
                before = {m.name for m in self.backend.models()}
                if self.backend.refresh():
                    for info in self.backend.models():
                        if info.name not in before and self.cfg.warmup:
                            self._warm(info.name)
                    self._changed()
            except Exception:
                log.exception("model scan failed")


class _Stream:
    """Ordered chunks of one task on ``ig3/v1/tasks/{task}/stream``."""

    def __init__(self, agent: Agent, task: DeviceTask):
        self.agent = agent
        self.task = task
        self.topic = wire.task_stream_topic(task.id)
        self.seq = 0
        self.buf: list[str] = []
        self.window_s = agent.cfg.stream_coalesce_ms / 1000.0
        self.last = 0.0
        self.qos = agent.cfg.stream_qos

    def _send(self, chunk: StreamChunk) -> None:
        self.agent.transport.publish(self.topic, chunk.model_dump_json(exclude_none=True).encode(), qos=self.qos)
        self.seq += 1

    def delta(self, text: str) -> None:
        if self.window_s > 0:
            now = time.monotonic()
            self.buf.append(text)
            if self.seq > 0 and now - self.last < self.window_s:
                return
            text, self.buf, self.last = "".join(self.buf), [], now
        self._send(StreamChunk(task_id=self.task.id, attempt=self.task.attempt, seq=self.seq, delta=text))

    def final(self, result: DeviceResult) -> None:
        finish = result.output.finish_reason if result.output else None
        self._send(StreamChunk(task_id=self.task.id, attempt=self.task.attempt, seq=self.seq,
                               delta="".join(self.buf), final=True, finish_reason=finish or result.status,
                               usage=result.usage, error=result.error))
        self.buf = []
