"""In-memory fakes of the dispatch service's ports (unit tests only)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ig3.events import MemoryEventPublisher
from ig3.iot import MemoryIotPublisher
from ig3.tasks.notify import MemoryNotifier
from ig3.tasks.queue import MemoryTaskQueue
from ig3.tasks.service import TaskService
from ig3.tasks.store import MemoryTaskStore


@dataclass
class Placement:
    thing: str
    model_hash: str | None = None
    reason: dict = field(default_factory=dict)


class FakePlacer:
    """Devices with a capacity each; reservations by task id (idempotent), like the real scheduler."""

    def __init__(self, devices: dict[str, int], models: set[str] = frozenset({"m"})):
        self.capacity = dict(devices)
        self.models = set(models)
        self.slots: dict[str, set[str]] = {d: set() for d in devices}
        self.outcomes: list[tuple[str, bool]] = []

    def place(self, task, *, hold_s):
        if task.model not in self.models:
            return None
        for thing, cap in sorted(self.capacity.items()):
            if thing in task.excluded:
                continue
            if task.task_id in self.slots[thing] or len(self.slots[thing]) < cap:
                self.slots[thing].add(task.task_id)
                return Placement(thing, reason={"winner": thing})
        return None

    def release(self, thing, task_id):
        s = self.slots.get(thing, set())
        if task_id in s:
            s.discard(task_id)
            return True
        return False

    def record_outcome(self, thing, ok):
        self.outcomes.append((thing, ok))

    def serves(self, model):
        return model in self.models and bool(self.capacity)


def make_service(devices=None, *, clock=None, cloud=None, verifier=None, settings=None, models=frozenset({"m"})):
    from ig3.config import DispatchSettings

    svc = TaskService(store=MemoryTaskStore(), placer=FakePlacer(devices or {"d1": 1, "d2": 1, "d3": 1}, set(models)),
                      iot=MemoryIotPublisher(), queue=MemoryTaskQueue(), events=MemoryEventPublisher(),
                      notifier=MemoryNotifier(), settings=settings or DispatchSettings(edge_attempts=3, cloud_attempts=1),
                      cloud=cloud, verifier=verifier)
    if clock is not None:
        svc.clock = clock
    return svc
