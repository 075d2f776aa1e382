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
        req = self._request(task, hold_s, self._excluded())
        return self._placed(task, req, self._scheduler.place_explained(req))

    def place_many(self, items: list[tuple[Task, float]]) -> list[Any | None]:
        """``place`` for a batch: one pipelined fetch and one reservation script (Scheduler.place_many)."""
        quarantined = self._excluded()
        reqs = [self._request(task, hold_s, quarantined) for task, hold_s in items]
        outcomes = self._scheduler.place_many(reqs)
        return [self._placed(task, req, o) for (task, _), req, o in zip(items, reqs, outcomes)]

    def _excluded(self) -> frozenset[str]:
        return frozenset(self._quarantine.excluded()) if self._quarantine is not None else frozenset()

    @staticmethod
    def _request(task: Task, hold_s: float, quarantined: frozenset[str]):
        from ig3.scheduler import PlacementRequest

        near = tuple(task.constraints.near) if task.constraints.near else None
        return PlacementRequest(task_id=task.task_id, model=task.model, kind=task.kind,
                                region=task.constraints.region, near=near,
                                exclude=frozenset(task.excluded) | quarantined, hold_s=hold_s)

    @staticmethod
    def _placed(task: Task, req: Any, outcome: Any) -> Any | None:
        if outcome.placement is None:
            # Why a task waits or falls back is the first question an operator asks (no prompt text here).
            logger.info("no placement", extra={"task_id": task.task_id, "model": task.model,
                                               "why": outcome.reason.get("why"),
                                               "rejected": outcome.reason.get("rejected"),
                                               "excluded": sorted(req.exclude)})
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
