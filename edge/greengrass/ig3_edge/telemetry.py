"""Load and speed figures for the heartbeat: tokens/s EWMA (device-wide and per model), CPU, memory.

EWMA rather than a window average: one number per model, O(1) memory, recent tasks weigh
more (alpha 0.3: about the last 5 tasks dominate), which is what the scheduler wants to rank by.
CPU is system-wide (other processes on the M1 slow us down too), sampled without blocking.
"""
from __future__ import annotations

import threading


class Ewma:
    def __init__(self, alpha: float = 0.3):
        self.alpha = alpha
        self.value: float | None = None
        self._lock = threading.Lock()

    def add(self, x: float) -> float:
        with self._lock:
            self.value = x if self.value is None else self.alpha * x + (1 - self.alpha) * self.value
            return self.value


class SystemLoad:
    """psutil readings; ``None`` where psutil is missing (it is optional on odd platforms)."""

    def __init__(self) -> None:
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil ships with the component
            self._psutil = None
            return
        self._psutil = psutil
        psutil.cpu_percent(interval=None)  # the first reading is meaningless; prime it

    def cpu_percent(self) -> float | None:
        return round(self._psutil.cpu_percent(interval=None), 1) if self._psutil else None

    def mem_percent(self) -> float | None:
        return round(self._psutil.virtual_memory().percent, 1) if self._psutil else None
