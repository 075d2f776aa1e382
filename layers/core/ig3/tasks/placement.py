"""Adapts the scheduler (``ig3.scheduler``) to the dispatch service's ``Placer`` port."""
from __future__ import annotations

from typing import Any

from ig3.observability import logger
from ig3.tasks.model import Task


class SchedulerPlacer:
    def __init__(self, scheduler: Any, live: Any, quarantine: Any | None = None):
        self._scheduler = scheduler
        self._live = live
        # ig3.audit.store.RedisReputationStore: devices in quarantine get no new work (issue #13).
        self._quarantine = quarantine

    def place(self, task: Task, *, hold_s: float) -> Any | None:
        from ig3.scheduler import PlacementRequest

        near = tuple(task.constraints.near) if task.constraints.near else None
        exclude = frozenset(task.excluded)
        if self._quarantine is not None:
            exclude |= frozenset(self._quarantine.excluded())
        req = PlacementRequest(task_id=task.task_id, model=task.model, kind=task.kind,
                               region=task.constraints.region, near=near, exclude=exclude,
                               hold_s=hold_s)
        outcome = self._scheduler.place_explained(req)
        if outcome.placement is None:
            # Why a task waits or falls back is the first question an operator asks (no prompt text here).
            logger.info("no placement", extra={"task_id": task.task_id, "model": task.model,
                                               "why": outcome.reason.get("why"),
                                               "rejected": outcome.reason.get("rejected"),
                                               "excluded": sorted(exclude)})
        return outcome.placement

    def release(self, thing: str, task_id: str) -> bool:
        return self._scheduler.release(thing, task_id)

    def record_outcome(self, thing: str, ok: bool) -> None:
        self._live.record_outcome(thing, ok)

    def serves(self, model: str) -> bool:
        serves = getattr(self._live, "serves", None)
        if serves is not None:
            return bool(serves(model))
        return any(entry.get("model") == model and entry.get("devices") for entry in self._live.catalogue())
