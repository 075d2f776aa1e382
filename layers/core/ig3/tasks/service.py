"""The AI Gateway's task services: submit, dispatch, results, timeouts.

Every entry point is idempotent under at-least-once delivery. A transition is written with a
conditional put (``state`` + ``store``); the effects that follow it (slot release, the next
queue message, notifications, events) are derived from the state the task is *in*, so a
redelivered message whose transition already happened replays the effects instead of being
lost — a crash between the write and the effects never strands a task. Effects themselves are
idempotent (slot release by task id, dispatch of a non-PENDING task is a no-op, events carry a
deterministic ``event_id``).
"""
from __future__ import annotations

import hashlib
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ig3.config import DispatchSettings, dispatch_settings
from ig3.errors import Conflict, NotFound, Unavailable
from ig3.events import DomainEvent, EventPublisher
from ig3.iot import IotPublisher
from ig3.observability import logger, metrics
from ig3.tasks import state
from ig3.tasks.model import Task, TaskSpec, TaskStatus
from ig3.tasks.store import StaleWrite, TaskStore
from ig3.wire import DeviceResult, DeviceTask, ResultError, TaskOutput, Usage, device_tasks_topic

from aws_lambda_powertools.metrics import MetricUnit

MAX_WRITE_RETRIES = 5
# How long a task may wait for a busy fleet (devices have the model, none has a free slot).
QUEUE_WAIT_S = float(os.environ.get("IG3_QUEUE_WAIT_S", "120"))
SQS_MAX_DELAY_S = 900


class Placer(Protocol):
    """What dispatch needs from the scheduler (``ig3.scheduler`` adapts to it)."""

    def place(self, task: Task, *, hold_s: float) -> Any | None: ...  # has .thing, .model_hash, .reason
    # Optional: ``place`` for several (task, hold_s) at once, results in order (TaskService.batch_placement).
    # def place_many(self, items: list[tuple[Task, float]]) -> list[Any | None]: ...
    def release(self, thing: str, task_id: str) -> bool: ...
    def record_outcome(self, thing: str, ok: bool) -> None: ...
    def serves(self, model: str) -> bool: ...  # any live device has the model (busy or not)


class TaskQueue(Protocol):
    def send_dispatch(self, task_id: str, delay_s: float = 0) -> None: ...
    def send_timeout(self, task_id: str, attempt: int, deadline: float, delay_s: float) -> None: ...


class Notifier(Protocol):
    def announce(self, task: Task) -> None: ...


class CloudBackend(Protocol):
    """The cloud fallback (SageMaker via LiteLLM). Runs one task to completion."""

    name: str

    def serves(self, model: str) -> bool: ...
    def run(self, task: Task) -> tuple[TaskOutput, Usage]: ...


class CloudQueue(Protocol):
    """Hands a cloud-routed assignment to the cloud worker (SQS ``cloud`` queue, one per invocation)."""

    def send_cloud(self, task_id: str, attempt: int) -> None: ...


class CloudClaims(Protocol):
    """One run per cloud assignment: a re-sent hand-off (a replayed dispatch) must not call the
    endpoint twice (double cost, two streams interleaved on one topic)."""

    def claim(self, task_id: str, attempt: int, ttl_s: float) -> bool: ...


class FleetSpeedProbe(Protocol):
    def best_tokens_per_s(self, model: str, region: str | None = None) -> float | None: ...


class ResultVerifier(Protocol):
    def verify(self, result: DeviceResult) -> bool: ...


class AuditHook(Protocol):
    """Verifiable work (``ig3.audit.AuditService``): reputation signals and audit sampling."""

    def task_completed(self, task: Task) -> Any: ...  # counts the success, may queue an audit
    def device_fault(self, thing: str, code: str, key: str) -> Any: ...  # bad_signature, model_mismatch, ...


class Budget(Protocol):
    """Hold-and-settle (``ig3.billing``): reserve before work starts; the billing function
    settles the actual cost from ``UsageRecorded`` (completed) or releases it (failed)."""

    def hold(self, task: Task, *, key_id: str | None, key_budget: int | None) -> None: ...  # raises PaymentRequired
    def release(self, task_id: str) -> None: ...


@dataclass
class DispatchOutcome:
    action: str  # assigned | cloud | cloud_queued | waiting | failed | skipped
    task: Task | None = None
    delay_s: float = 0.0


def new_task_id(account: str = "", idempotency_key: str | None = None) -> str:
    """Time-ordered random id; deterministic per (account, Idempotency-Key) when one is given."""
    if idempotency_key:
        return "tsk_" + hashlib.sha256(f"{account}\x00{idempotency_key}".encode()).hexdigest()[:26]
    return f"tsk_{int(time.time() * 1000):011x}{uuid.uuid4().hex[:15]}"


@dataclass
class TaskService:
    store: TaskStore
    placer: Placer
    iot: IotPublisher
    queue: TaskQueue
    events: EventPublisher
    notifier: Notifier
    settings: DispatchSettings = field(default_factory=dispatch_settings)
    cloud: CloudBackend | None = None
    verifier: ResultVerifier | None = None
    budget: Budget | None = None
    # Fastest free device's tokens/s for a model (``ig3.tasks.cloud.FleetSpeed``): the SLO policy.
    fleet_speed: FleetSpeedProbe | None = None
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    audit: AuditHook | None = None
    # Set where a cloud worker runs the fallback (AWS: the "cloud" function; ig3 up): the dispatcher
    # assigns and hands off, so one slow endpoint call never holds up a batch of edge dispatches.
    # None: the cloud attempt runs inline, in this process.
    cloud_queue: CloudQueue | None = None
    cloud_claims: CloudClaims | None = None
    # batch_placement's placements, by task id: (the task as read, its placement or None). Per thread:
    # the local cloud runs several SQS pollers' handlers in one process, on one service.
    _batch: threading.local = field(default_factory=threading.local, init=False, repr=False)

    # ---------------------------------------------------------------- submit
    def submit(self, spec: TaskSpec, *, account: str, idempotency_key: str | None = None,
               dispatch_inline: bool = False, key_id: str | None = None, key_budget: int | None = None) -> Task:
        now = self.clock()
        task = Task(task_id=new_task_id(account, idempotency_key), kind=spec.kind, model=spec.model,
                    input=spec.input, limits=spec.limits, constraints=spec.constraints, stream=spec.stream,
                    account=account, created_at=now, updated_at=now)
        existing = self.store.get(task.task_id) if idempotency_key else None
        if existing is not None:
            if existing.account != account:
                raise Conflict("Idempotency-Key was already used", code="idempotency_conflict")
            return existing  # same key, same caller: the same task
        if self.budget is not None:
            # Before anything is written: a caller who cannot pay gets 402 and leaves no trace.
            self.budget.hold(task, key_id=key_id, key_budget=key_budget)
        try:
            self.store.create(task)
        except StaleWrite:
            existing = self.store.get(task.task_id)
            if existing is None or existing.account != account:
                raise Conflict("Idempotency-Key was already used", code="idempotency_conflict") from None
            return existing  # a concurrent submission with the same key won
        try:
            if dispatch_inline:
                outcome = self.dispatch(task.task_id)
                if outcome.action == "waiting":
                    self.queue.send_dispatch(task.task_id, outcome.delay_s)
                task = outcome.task or task
            else:
                self.queue.send_dispatch(task.task_id)
        except Exception:
            # Nothing half-written: a task nobody will ever dispatch must not exist.
            current = self.store.get(task.task_id)
            if current is not None and current.status is TaskStatus.PENDING:
                try:
                    self.store.delete(task.task_id, expected_version=current.version)
                except StaleWrite:
                    pass
                if self.budget is not None:
                    self.budget.release(task.task_id)
                logger.exception("task submission failed; removed", extra={"task_id": task.task_id})
                raise Unavailable("the task queue is unavailable; try again", code="queue_unavailable") from None
            raise
        self.events.publish([DomainEvent("TaskSubmitted", _event_detail(task), f"{task.task_id}:submitted")])
        metrics.add_metric(name="TasksSubmitted", unit=MetricUnit.Count, value=1)
        return task

    def get(self, task_id: str, *, account: str | None = None) -> Task:
        task = self.store.get(task_id)
        if task is None or (account is not None and task.account != account):
            raise NotFound(f"no task {task_id}", code="task_not_found")
        return task

    # --------------------------------------------------------------- dispatch
    @contextmanager
    def batch_placement(self, task_ids: Iterable[str]) -> Iterator[None]:
        """Place the batch's PENDING edge tasks together, then dispatch them one by one inside the block.

        With a placer that has ``place_many`` (the scheduler: one pipelined candidate fetch and one
        reservation script for the whole batch, instead of two Redis round trips per task),
        ``dispatch`` takes its task's placement — and the task as read here — from this batch. A
        dispatch that finds its task changed meanwhile discards the placement and places alone (a
        task holds at most one reservation, so that re-uses or moves it: nothing leaks, nothing is
        released that another dispatch assigned). Placements of tasks whose dispatch never ran are
        released when the block ends.
        """
        place_many = getattr(self.placer, "place_many", None)
        if place_many is None or getattr(self._batch, "placed", None) is not None:
            yield
            return
        self._batch.placed = {}
        try:
            try:
                self._prefetch(list(dict.fromkeys(task_ids)), place_many)
            except Exception:  # noqa: BLE001 — each dispatch then places alone (and fails alone)
                logger.exception("batch placement failed: placing one by one")
            yield
        finally:
            left, self._batch.placed = self._batch.placed, None
            for task_id, (_task, placement) in left.items():
                if placement is not None:
                    self.placer.release(placement.thing, task_id)

    def _prefetch(self, task_ids: list[str], place_many: Callable[..., list[Any]]) -> None:
        wanted: list[tuple[Task, float]] = []
        for task_id in task_ids:
            task = self.store.get(task_id)
            if task is None or task.status is not TaskStatus.PENDING:
                continue
            route, _why, _cloud_ok = self._first_route(task)
            if route == "edge":
                wanted.append((task, self._attempt_budget(task) + 30))
        if not wanted:
            return
        placed = self._batch.placed
        for (task, _hold), placement in zip(wanted, place_many(wanted)):
            placed[task.task_id] = (task, placement)

    def dispatch(self, task_id: str, *, redelivered: bool = False) -> DispatchOutcome:
        """Place a PENDING task. ``redelivered``: this dispatch message came back (SQS receive count
        > 1) — a transition it made may lack its effects (events not taken, a send that failed),
        so those of the state the task is in are replayed (all idempotent)."""
        batch = getattr(self._batch, "placed", None)
        prefetched = batch.pop(task_id, None) if batch else None
        for _ in range(MAX_WRITE_RETRIES):
            if prefetched is not None:  # read by batch_placement a moment ago; a stale copy fails its write
                task = prefetched[0]
            else:
                task = self.store.get(task_id)
            if task is None:
                return DispatchOutcome("skipped", task)
            if task.status is not TaskStatus.PENDING:
                if redelivered:
                    self._replay_dispatch_effects(task)
                return DispatchOutcome("skipped", task)
            placed, prefetched = prefetched, None
            try:
                return self._dispatch_pending(task, placed)
            except StaleWrite:
                continue
        raise RuntimeError(f"dispatch of {task_id}: too many concurrent writers")

    def _first_route(self, task: Task) -> tuple[str | None, str, bool]:
        """(route, why the cloud if it goes there, whether the cloud may take it) before placing."""
        route = state.choose_route(task, self.settings)
        cloud_ok = self._cloud_serves(task) and task.constraints.prefer != "edge" and \
            task.cloud_attempts < self.settings.cloud_attempts
        why_cloud = "prefer=cloud" if task.constraints.prefer == "cloud" else \
            f"edge attempts spent ({task.edge_attempts})"
        if route == "edge" and cloud_ok:
            # Straight to the cloud when the edge cannot do it at all (no placement attempted).
            why_cloud = self._edge_cannot(task) or ""
            if why_cloud:
                route = "cloud"
        return route, why_cloud, cloud_ok

    def _dispatch_pending(self, task: Task, prefetched: tuple[Task, Any | None] | None = None) -> DispatchOutcome:
        now = self.clock()
        route, why_cloud, cloud_ok = self._first_route(task)
        placement = None
        if prefetched is not None and (route != "edge" or prefetched[0].version != task.version):
            # Planned for another state of the task: a placement of this version's own follows.
            if prefetched[1] is not None and route != "edge" and prefetched[0].version == task.version:
                self.placer.release(prefetched[1].thing, task.task_id)
            prefetched = None
        if route == "edge":
            hold_s = self._attempt_budget(task) + 30
            placement = prefetched[1] if prefetched is not None else self.placer.place(task, hold_s=hold_s)
            if placement is None:
                if cloud_ok:
                    route, why_cloud = "cloud", f"no device had a free slot for model {task.model!r}"
                elif self.placer.serves(task.model) and now - task.created_at < QUEUE_WAIT_S:
                    delay = min(5.0, 0.5 + self.rng.random())
                    return DispatchOutcome("waiting", task, delay)  # busy fleet: try again shortly
                else:
                    reason = (f"no live device serves model {task.model!r}" if not self.placer.serves(task.model)
                              else f"no device had capacity for model {task.model!r} within {QUEUE_WAIT_S:.0f}s")
                    return self._finish_failed(state.fail_unplaceable(task, reason=reason, now=now), task)
        if route is None:
            return self._finish_failed(state.fail_unplaceable(task, reason="no route left", now=now), task)
        if route == "cloud" and not self._cloud_serves(task):
            if task.constraints.prefer == "cloud":
                reason = f"prefer=cloud but no cloud endpoint serves {task.kind} on model {task.model!r}"
            elif task.edge_attempts == 0 and not self.placer.serves(task.model):
                reason = f"no live device or cloud endpoint serves model {task.model!r}"
            else:
                reason = "edge attempts exhausted and no cloud fallback serves the model"
            return self._finish_failed(state.fail_unplaceable(task, reason=reason, now=now), task)

        deadline = now + self._attempt_budget(task)
        if route == "edge":
            assigned = state.assign(task, route="edge", device=placement.thing, deadline=deadline, now=now,
                                    model_hash=getattr(placement, "model_hash", None),
                                    decision=getattr(placement, "reason", None))
            try:
                self.store.replace(assigned, expected_version=task.version)
            except StaleWrite:
                self.placer.release(placement.thing, task.task_id)
                raise
            self._after_assigned(assigned)
            return DispatchOutcome("assigned", assigned)
        return self._run_cloud(task, deadline, now, why_cloud)

    def _cloud_serves(self, task: Task) -> bool:
        if self.cloud is None or not self.cloud.serves(task.model):
            return False
        kinds = getattr(self.cloud, "kinds", None)
        return kinds is None or task.kind in kinds

    def _edge_cannot(self, task: Task) -> str | None:
        """Why no edge attempt should be made at all (None: try the edge)."""
        if not self.placer.serves(task.model):
            return f"no live device serves model {task.model!r}"
        slo = task.constraints.min_tokens_per_s
        if slo is not None and self.fleet_speed is not None:
            best = self.fleet_speed.best_tokens_per_s(task.model, task.constraints.region)
            if best is None or best < slo:
                got = ("no free device reports a speed" if best is None
                       else f"the fastest free device does {best:.1f}")
                return f"SLO min_tokens_per_s={slo:g}: {got}"
        return None

    def _attempt_budget(self, task: Task) -> float:
        return float(task.constraints.deadline_s or self.settings.default_deadline_s)

    def _after_assigned(self, task: Task) -> None:
        """Effects of ASSIGNED(attempt): the device gets the task, a timeout is armed, an event."""
        assert task.device is not None and task.deadline is not None
        msg = DeviceTask(id=task.task_id, attempt=task.attempt, kind=task.kind, model=task.model,
                         model_hash=task.model_hash, input=task.input, limits=task.limits,
                         deadline=task.deadline, stream=task.stream)
        self.queue.send_timeout(task.task_id, task.attempt, task.deadline,
                                delay_s=max(0.0, task.deadline - self.clock()) + 1.0)
        try:
            self.iot.publish(device_tasks_topic(task.device), msg.model_dump_json(exclude_none=True).encode())
        except Exception:  # noqa: BLE001 — the armed timeout re-queues it; log the fact only
            logger.exception("publish to device failed", extra={"task_id": task.task_id, "device": task.device})
        self.events.publish([DomainEvent("TaskAssigned", _event_detail(task),
                                         f"{task.task_id}:assigned:{task.attempt}")])
        metrics.add_metric(name="TasksAssigned", unit=MetricUnit.Count, value=1)

    def _run_cloud(self, task: Task, deadline: float, now: float, why: str) -> DispatchOutcome:
        assert self.cloud is not None
        device = f"cloud:{self.cloud.name}"
        # A SageMaker invocation runs at most 60 s: the attempt's deadline never exceeds it by much.
        assigned = state.assign(task, route="cloud", device=device, deadline=deadline, now=now,
                                decision={"route": "cloud", "winner": device, "why": why,
                                          "edge_attempts": task.edge_attempts,
                                          "excluded": list(task.excluded)})
        self.store.replace(assigned, expected_version=task.version)
        self._after_cloud_assigned(assigned)
        if self.cloud_queue is not None:
            return DispatchOutcome("cloud_queued", assigned)
        ran = self._execute_cloud(assigned)
        return DispatchOutcome("cloud" if ran == "completed" else "failed", self.store.get(task.task_id))

    def _after_cloud_assigned(self, task: Task) -> None:
        """Effects of ASSIGNED(cloud, attempt): the event, the timeout, the hand-off to the worker."""
        assert task.deadline is not None
        self.events.publish([DomainEvent("TaskAssigned", _event_detail(task),
                                         f"{task.task_id}:assigned:{task.attempt}")])
        # The timeout still guards it: a crashed cloud call (or a lost hand-off) re-queues or fails the task.
        self.queue.send_timeout(task.task_id, task.attempt, task.deadline,
                                delay_s=max(0.0, task.deadline - self.clock()) + 1.0)
        if self.cloud_queue is not None:
            self.cloud_queue.send_cloud(task.task_id, task.attempt)

    def run_cloud(self, task_id: str, attempt: int) -> str:
        """The cloud worker's entry: run a handed-off cloud assignment to its result.

        Idempotent: only the assignment it names, while it is still ASSIGNED, and only once
        (``cloud_claims``); anything else is stale."""
        task = self.store.get(task_id)
        if task is None:
            return "unknown_task"
        if task.status is not TaskStatus.ASSIGNED or task.attempt != attempt or task.route != "cloud":
            return "stale"
        if self.cloud_claims is not None:
            ttl = max(60.0, (task.deadline or self.clock()) - self.clock() + 60.0)
            if not self.cloud_claims.claim(task_id, attempt, ttl):
                return "duplicate"
        return self._execute_cloud(task)

    def _execute_cloud(self, assigned: Task) -> str:
        assert assigned.device is not None
        if self.cloud is None:
            # A worker without a configured endpoint cannot run it: the attempt fails (retry / FAILED)
            # instead of waiting for its deadline.
            err = ResultError(code="cloud_unavailable", message="no cloud endpoint is configured here",
                              retryable=True)
            return self._apply_failure(assigned.task_id, assigned.attempt, assigned.device, err)
        try:
            output, usage = self.cloud.run(assigned)
        except Exception as exc:  # noqa: BLE001
            logger.warning("cloud fallback failed",
                           extra={"task_id": assigned.task_id, "error_type": type(exc).__name__})
            err = ResultError(code="cloud_error", message=f"cloud endpoint failed: {type(exc).__name__}", retryable=True)
            return self._apply_failure(assigned.task_id, assigned.attempt, assigned.device, err)
        result = DeviceResult(task_id=assigned.task_id, attempt=assigned.attempt, thing=assigned.device,
                              status="ok", output=output, usage=usage)
        return self._apply_success(result)

    def _replay_dispatch_effects(self, task: Task) -> None:
        """A redelivered dispatch message of a task that already moved on: re-emit what the move
        owed (events, timeout, hand-off) — each idempotent. Not the device publish: a device that
        missed its task is recovered by the timeout, and one that got it must not run it twice."""
        if task.status is TaskStatus.ASSIGNED and task.deadline is not None:
            if task.route == "cloud":
                self._after_cloud_assigned(task)  # the worker's claim makes a second hand-off a no-op
            else:
                self.queue.send_timeout(task.task_id, task.attempt, task.deadline,
                                        delay_s=max(0.0, task.deadline - self.clock()) + 1.0)
                self.events.publish([DomainEvent("TaskAssigned", _event_detail(task),
                                                 f"{task.task_id}:assigned:{task.attempt}")])
        elif task.terminal:
            self.events.publish(_terminal_events(task))

    # ---------------------------------------------------------------- results
    def handle_result(self, result: DeviceResult) -> str:
        """Apply a device's result. Returns what happened (for logs/metrics/tests)."""
        if self.verifier is not None and not self.verifier.verify(result):
            metrics.add_metric(name="ResultsRejected", unit=MetricUnit.Count, value=1)
            self.placer.record_outcome(result.thing, ok=False)
            logger.warning("result signature rejected", extra={"task_id": result.task_id, "device": result.thing})
            # The thing is the topic's (IoT Core authenticates it by certificate): the device itself
            # sent an answer its registered key did not sign.
            self._audit_fault(result.thing, "bad_signature", f"sig:{result.task_id}:{result.attempt}:{result.thing}")
            task = self.store.get(result.task_id)
            if task and task.status is TaskStatus.ASSIGNED and task.device == result.thing \
                    and task.attempt == result.attempt:
                # The assignee's answer cannot be trusted: the attempt failed; try elsewhere.
                self._apply_failure(result.task_id, result.attempt, result.thing,
                                    ResultError(code="bad_signature", message="result signature invalid",
                                                retryable=True))
            return "rejected"
        if result.status == "ok":
            return self._apply_success(result)
        error = result.error or ResultError(code="released", message="device released the task", retryable=True)
        if result.status == "released":
            error = ResultError(code="released", message=error.message, retryable=True)
        return self._apply_failure(result.task_id, result.attempt, result.thing, error)

    def _model_mismatch(self, task: Task, result: DeviceResult) -> str | None:
        """A result from the assignee that ran another model file than the task pinned: rejected."""
        if not task.model_hash or task.route == "cloud" or task.status is not TaskStatus.ASSIGNED \
                or task.device != result.thing or task.attempt != result.attempt \
                or result.model_hash == task.model_hash:
            return None
        metrics.add_metric(name="ResultsModelMismatch", unit=MetricUnit.Count, value=1)
        logger.warning("result names another model file than the task pinned",
                       extra={"task_id": result.task_id, "device": result.thing})
        self._audit_fault(result.thing, "model_mismatch", f"hash:{result.task_id}:{result.attempt}")
        self._apply_failure(result.task_id, result.attempt, result.thing,
                            ResultError(code="model_mismatch", retryable=True,
                                        message="the result names another model file than the task was routed for"))
        return "model_mismatch"

    def _audit_fault(self, thing: str, code: str, key: str) -> None:
        if self.audit is None or thing.startswith("cloud:"):
            return
        try:
            self.audit.device_fault(thing, code, key)
        except Exception:  # noqa: BLE001 — reputation is advisory; the task's own path must go on
            logger.exception("reputation signal failed", extra={"device": thing, "code": code})

    def _apply_success(self, result: DeviceResult) -> str:
        for _ in range(MAX_WRITE_RETRIES):
            task = self.store.get(result.task_id)
            if task is None:
                return "unknown_task"
            if task.status is TaskStatus.COMPLETED and task.attempt == result.attempt and task.device == result.thing:
                self._after_terminal(task)  # duplicate delivery: replay idempotent effects
                return "duplicate"
            mismatch = self._model_mismatch(task, result)  # model identity (issue #13): no extra read
            if mismatch is not None:
                return mismatch
            try:
                done = state.complete(task, attempt=result.attempt, device=result.thing, output=result.output,
                                      usage=result.usage, now=self.clock())
            except state.InvalidTransition:
                self._count_foreign(task, result)
                return "stale"
            try:
                self.store.replace(done, expected_version=task.version)
            except StaleWrite:
                continue
            self._after_terminal(done)
            return "completed"
        raise RuntimeError("too many concurrent writers")

    def _apply_failure(self, task_id: str, attempt: int, device: str, error: ResultError) -> str:
        for _ in range(MAX_WRITE_RETRIES):
            task = self.store.get(task_id)
            if task is None:
                return "unknown_task"
            if task.attempt == attempt and task.status is not TaskStatus.ASSIGNED:
                # This attempt's failure was already applied: replay the effects of where it went.
                if task.status is TaskStatus.PENDING:
                    self._after_requeued(task, device)
                    return "duplicate"
                if task.terminal:
                    self._after_terminal(task)
                    return "duplicate"
            try:
                failure = state.fail_attempt(task, attempt=attempt, device=device, error=error,
                                             settings=self.settings, now=self.clock())
            except state.InvalidTransition:
                return "stale"
            try:
                self.store.replace(failure.task, expected_version=task.version)
            except StaleWrite:
                continue
            if error.code != "released":
                self.placer.record_outcome(device, ok=False)
            if error.code not in ("released", "bad_signature", "model_mismatch", "cancelled"):
                self._audit_fault(device, error.code, f"fail:{task_id}:{attempt}")
            if failure.outcome is state.Outcome.REQUEUED:
                self._after_requeued(failure.task, device)
                return "requeued"
            self._after_terminal(failure.task)
            return "failed"
        raise RuntimeError("too many concurrent writers")

    def _after_requeued(self, task: Task, failed_device: str) -> None:
        if not failed_device.startswith("cloud:"):
            self.placer.release(failed_device, task.task_id)
        delay = state.backoff_s(task.attempt, self.settings, self.rng.random())
        self.queue.send_dispatch(task.task_id, delay)
        self.events.publish([DomainEvent("TaskRequeued", {**_event_detail(task), "failed_device": failed_device,
                                                          "error": task.error.code if task.error else None},
                                         f"{task.task_id}:requeued:{task.attempt}")])
        metrics.add_metric(name="TasksRequeued", unit=MetricUnit.Count, value=1)

    def _after_terminal(self, task: Task) -> None:
        if task.device and not task.device.startswith("cloud:"):
            self.placer.release(task.device, task.task_id)
            if task.status is TaskStatus.COMPLETED:
                self.placer.record_outcome(task.device, ok=True)
        self.notifier.announce(task)
        events = _terminal_events(task)
        self.events.publish(events)
        completed = task.status is TaskStatus.COMPLETED
        if completed and task.route == "edge" and self.audit is not None:
            try:  # counts the success once per attempt; maybe queues an audit (never billed to the user)
                self.audit.task_completed(task)
            except Exception:  # noqa: BLE001 — a completed task stays completed
                logger.exception("audit intake failed", extra={"task_id": task.task_id})
        metrics.add_metric(name="TasksCompleted" if task.status is TaskStatus.COMPLETED else "TasksFailed",
                           unit=MetricUnit.Count, value=1)

    def _finish_failed(self, failed: Task, read: Task) -> DispatchOutcome:
        self.store.replace(failed, expected_version=read.version)
        self._after_terminal(failed)
        return DispatchOutcome("failed", failed)

    def _count_foreign(self, task: Task, result: DeviceResult) -> None:
        """A result for an assignment the device does not hold: late, duplicate, or forged."""
        if result.thing != task.device and not (task.attempt >= result.attempt and result.thing in task.excluded):
            self.placer.record_outcome(result.thing, ok=False)
            metrics.add_metric(name="ResultsForeign", unit=MetricUnit.Count, value=1)
            logger.warning("result from a device that is not the assignee",
                           extra={"task_id": task.task_id, "device": result.thing})

    # --------------------------------------------------------------- timeouts
    def handle_timeout(self, task_id: str, attempt: int, deadline: float) -> str:
        now = self.clock()
        remaining = deadline - now
        if remaining > 1.0:
            # SQS delays top out at 15 minutes: long deadlines are a chain of messages.
            self.queue.send_timeout(task_id, attempt, deadline, delay_s=min(SQS_MAX_DELAY_S, remaining))
            return "chained"
        task = self.store.get(task_id)
        if task is None or task.attempt != attempt:
            return "stale"
        if task.status is TaskStatus.PENDING:
            self._after_requeued(task, "cloud:" if task.route == "cloud" else (task.excluded or [""])[-1])
            return "duplicate"
        if task.status is not TaskStatus.ASSIGNED:
            return "stale"
        assert task.device is not None
        err = ResultError(code="deadline_exceeded", message=f"no result within the deadline (attempt {attempt})",
                          retryable=True)
        metrics.add_metric(name="TasksTimedOut", unit=MetricUnit.Count, value=1)
        return self._apply_failure(task_id, attempt, task.device, err)


def _terminal_events(task: Task) -> list[DomainEvent]:
    events = [DomainEvent("TaskCompleted" if task.status is TaskStatus.COMPLETED else "TaskFailed",
                          _event_detail(task), f"{task.task_id}:{task.status.value.lower()}")]
    # One usage event per task: completed work is settled, failed work only releases its hold.
    usage = task.usage or Usage()
    completed = task.status is TaskStatus.COMPLETED
    events.append(DomainEvent("UsageRecorded", {
        "request_id": task.task_id, "account": task.account, "model": task.model,
        "route": task.route or "edge", "kind": task.kind, "device": task.device,
        "prompt_tokens": usage.prompt_tokens if completed else 0,
        "completion_tokens": usage.completion_tokens if completed else 0,
        "status": "completed" if completed else "failed",
        # Whole milliseconds: the billing consumer's UsageRecorded takes integers only.
        "duration_ms": round(usage.duration_ms) if usage.duration_ms is not None else None,
        # Billed per second of endpoint time on the cloud route (ig3.billing.pricing).
        **({"sagemaker_ms": round(usage.duration_ms or 0)} if task.route == "cloud" else {})},
        f"usage:{task.task_id}"))
    return events


def _event_detail(task: Task) -> dict[str, Any]:
    return {"task_id": task.task_id, "status": task.status.value, "attempt": task.attempt, "model": task.model,
            "kind": task.kind, "device": task.device, "route": task.route, "account": task.account,
            "decision": task.decision}
