"""The dispatcher's short-lived copy of the free-capacity index's head (pure: no I/O).

Half of the requests carry no client location, so their candidates are only the best of the model's
free-capacity index by static quality plus a uniform sample of it — the same for every such request
of that model (and region). Reading them from Redis for each decision was half a fetch script's work
and a whole round trip. ``IndexView`` keeps, per (model, region), the index head and a larger
random pool as one fetch returned them, for ``Weights.index_view_ms`` (default 250 ms); each decision
draws its ``random_candidates`` from the pool. A request without a location then costs one round trip
(the reservation), one with a location a fetch of its grid cells only.

Why this is safe: the reservation script re-checks everything a stale copy could get wrong (live,
online, serves the model, region, a free slot, not excluded) and falls through to the next device in
the decision's order, so a stale view costs at worst a skipped device, never an overfilled one. The
view follows this dispatcher's own reservations at once (the winner's slot counted, a device that
filled up or was skipped dropped), and is refetched when it expires or when half of its head is gone.
What it can miss for up to ``index_view_ms``: other dispatchers' reservations (a skip when they took
the last slot), devices that came online or freed a slot (picked up at the next refetch), and a
changed model offer (context length, quantization, file hash: heartbeats change those rarely; the
result's signature names the file that served the task). This is the optimistic shared-state design
of cluster schedulers such as Google's Omega: decide on a copy, commit atomically, retry on conflict.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ig3.scheduler.core import Candidate

# Entries are per (model, region): the catalogue bounds them; this bounds a burst of odd names.
MAX_ENTRIES = 512


@dataclass
class _Entry:
    total: int  # devices in the free index when fetched
    top: list[Candidate]  # the index head, best first
    pool: list[Candidate]  # the uniform sample the decisions draw from
    head: int  # how many the head had when fetched
    at: float  # the scheduler's clock when fetched
    at_perf: float  # perf_counter when fetched (a test's frozen clock still expires the view)
    by_name: dict[str, Candidate] = field(default_factory=dict)


class IndexView:
    """Per (model, region): the free index's head and a random pool, for ``ttl_s`` seconds."""

    def __init__(self, ttl_s: float, *, perf=time.perf_counter):
        self.ttl_s = float(ttl_s)
        self._perf = perf
        self._entries: dict[tuple[str, str | None], _Entry] = {}
        self._lock = threading.Lock()  # dispatcher threads share the view

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def get(self, model: str, region: str | None, now: float) -> _Entry | None:
        """The fresh entry, or ``None`` (expired, half its head gone, never fetched)."""
        entry = self._entries.get((model, region))
        if entry is None:
            return None
        age = now - entry.at
        if (
            age < 0
            or age >= self.ttl_s
            or self._perf() - entry.at_perf >= self.ttl_s
            or 2 * len(entry.top) <= entry.head
        ):
            return None
        return entry

    def ageing(self, entry: _Entry, now: float) -> bool:
        """Past half its life: a fetch made anyway should renew it (the scheduler piggybacks)."""
        return 2 * max(now - entry.at, self._perf() - entry.at_perf) >= self.ttl_s

    def put(
        self,
        model: str,
        region: str | None,
        total: int,
        top: Sequence[Candidate],
        pool: Sequence[Candidate],
        now: float,
    ) -> None:
        """Keep what a fetch returned (an empty index is not kept: a device may join any moment)."""
        if not self.enabled or not top:
            return
        entry = _Entry(total, list(top), list(pool), len(top), now, self._perf())
        for c in (*entry.top, *entry.pool):
            entry.by_name[c.thing] = c
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES and (model, region) not in self._entries:
                oldest = min(self._entries, key=lambda k: self._entries[k].at_perf)
                del self._entries[oldest]
            self._entries[(model, region)] = entry

    def reserved(self, thing: str, skipped: Sequence[str] = ()) -> None:
        """This dispatcher reserved a slot on ``thing`` (after skipping ``skipped``, full or gone)."""
        if not self._entries:
            return
        with self._lock:
            for entry in self._entries.values():
                for gone in skipped:
                    if gone in entry.by_name:
                        self._drop(entry, gone)
                c = entry.by_name.get(thing)
                if c is not None:
                    c.reserved += 1  # free = capacity - max(in_flight, reserved), as in Redis
                    if c.free <= 0:
                        self._drop(entry, thing)

    def released(self, thing: str) -> None:
        """This dispatcher gave a slot on ``thing`` back (a device dropped as full stays out until
        the next refetch: the view has no fresh copy of it)."""
        if not self._entries:
            return
        with self._lock:
            for entry in self._entries.values():
                c = entry.by_name.get(thing)
                if c is not None and c.reserved > 0:
                    c.reserved -= 1

    def forget(self, things: Sequence[str]) -> None:
        """Devices every one of a decision's choices was full or gone on."""
        if not self._entries or not things:
            return
        with self._lock:
            for entry in self._entries.values():
                for thing in things:
                    if thing in entry.by_name:
                        self._drop(entry, thing)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    @staticmethod
    def _drop(entry: _Entry, thing: str) -> None:
        # New lists, never mutated ones: a decision in another thread may be iterating the old.
        del entry.by_name[thing]
        entry.top = [c for c in entry.top if c.thing != thing]
        entry.pool = [c for c in entry.pool if c.thing != thing]


def index_candidates(
    top: Sequence[Candidate], pool: Sequence[Candidate], sample: int, rng: random.Random
) -> list[Candidate]:
    """A decision's index candidates: the head plus ``sample`` drawn from the pool (a view's or a
    fresh fetch's), so decisions between refetches differ."""
    if len(pool) > sample:
        pool = rng.sample(pool, sample)
    return [*top, *pool]
