"""The scheduler: bounded candidates -> pure decision -> atomic reservation.

At most two Redis round trips per decision, whatever the fleet size: one script returns a bounded
candidate set (``LiveState.fetch``), the pure core (``ig3.scheduler.core``) filters, scores and
draws in Python, one script reserves a slot on the drawn device — re-checking it inside Redis and
falling through to the next-best in the same call if it filled up meanwhile. Only when every device
tried was full (a burst of concurrent dispatchers) is the fetch repeated once; the reservation
script has already taken those devices out of the free index by then.

The index part of the candidates (the free index's head by static quality and a random sample of
it) is the same for every request of a model and region, so it comes from the dispatcher's
short-lived view (``ig3.scheduler.view``, ``Weights.index_view_ms``): a request without a client
location then makes one round trip (the reservation), one with a location fetches its grid cells
only. The reservation's re-check makes the view's staleness cost a skipped device at worst; "no
device fits" is only ever concluded from a fresh fetch.

Why decide in Python rather than inside the Lua script: the decision is the part that changes
(weights, reputation, SLOs) and the part worth property-testing; the scripts stay small and
obviously atomic (and Redis's Lua is slow: ~35 us of interpreter for a 9-cell grid level, measured).
The cost is one extra round trip (~0.1 ms locally) for requests with a location, measured in
``bench/bench_scheduler.py``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ig3.scheduler.core import Candidate, Decision, Placement, PlacementRequest, Weights, decide, explain
from ig3.scheduler.live import Fetched, LiveState
from ig3.scheduler.view import IndexView, index_candidates
from ig3.wire import TASK_ID_RE

_RESERVE_ROUNDS = 2
# The view's random pool is this many times a decision's sample, so decisions between refetches differ.
POOL_FACTOR = 4


@dataclass(frozen=True)
class Outcome:
    """A placement attempt with its decision record, also when nothing fits."""

    placement: Placement | None
    reason: dict[str, Any]


class Scheduler:
    def __init__(
        self,
        live: LiveState,
        weights: Weights | None = None,
        rng: random.Random | None = None,
        *,
        clock=time.time,
    ):
        self.live = live
        self.weights = weights if weights is not None else Weights.from_env()
        self.rng = rng if rng is not None else random.Random()
        self.clock = clock
        self.view = IndexView(self.weights.index_view_ms / 1000.0)

    def place(self, req: PlacementRequest) -> Placement | None:
        """Filter, score, draw among the top-K and atomically reserve a slot; ``None`` if nothing fits."""
        return self.place_explained(req).placement

    def place_explained(self, req: PlacementRequest) -> Outcome:
        """``place`` plus the decision record when nothing fits (for the cloud-fallback reason)."""
        self._validate(req)
        w = self.weights
        t_start = time.perf_counter()
        t_fetch = t_reserve = 0.0
        skipped_all: list[str] = []
        decision: Decision | None = None
        for round_ in range(_RESERVE_ROUNDS):
            now = self.clock()
            # A second round follows a first whose every device was full: not from the view again.
            decision, fetch_s = self._decide(req, now, fresh=round_ > 0)
            t_fetch += fetch_s
            if not decision.order:
                break
            t0 = time.perf_counter()
            thing, position, skipped = self.live.reserve(
                req.task_id,
                req.model,
                req.region,
                [s.thing for s in decision.order],
                hold_s=req.hold_s,
                exclude=req.exclude,
                now=now,
            )
            t_reserve += time.perf_counter() - t0
            skipped_all += skipped
            self._follow(thing, skipped)
            if thing is not None:
                return Outcome(
                    self._placement(req, decision, thing, position, skipped_all, t_start, t_fetch, t_reserve),
                    {},
                )
        assert decision is not None
        reason = explain(decision, req, w, None, skipped_all)
        reason["timing_us"] = _timing(t_start, t_fetch, t_reserve)
        return Outcome(None, reason)

    def place_many(self, reqs: Sequence[PlacementRequest]) -> list[Outcome]:
        """``place_explained`` for a batch (one SQS batch of dispatch work) in two round trips.

        One pipelined fetch for every request, the pure decisions in order, one reservation script
        for the whole batch. Decisions see the batch's own earlier winners (their slots counted as
        reserved), so a batch spreads over devices rather than piling onto one; the script still
        re-checks every device atomically and falls through to the next in each task's order. A
        request that needs more than the first candidate page, or whose every device filled up, is
        finished by ``place_explained`` alone. Outcomes come back in the requests' order.
        """
        for req in reqs:
            self._validate(req)
        if len(reqs) <= 1:
            return [self.place_explained(req) for req in reqs]
        w = self.weights
        t_start = time.perf_counter()
        now = self.clock()
        t0 = time.perf_counter()
        fetched = self._first_pages(reqs, now)
        t_fetch = time.perf_counter() - t0
        taken: dict[str, int] = {}  # slots the batch's earlier winners will take, per device
        decisions: list[Decision | None] = []
        decide_s: list[float] = []
        for req, (total, cands, viewed) in zip(reqs, fetched):
            t0 = time.perf_counter()
            if taken:
                cands = [_with_reserved(c, taken[c.thing]) if c.thing in taken else c for c in cands]
            decision = decide(cands, req, w, self.rng)
            if not decision.order and (viewed or total > w.index_candidates):
                # Filters rejected the first page (paged alone below), or the view held nothing
                # that fits (said only on a fresh fetch, below).
                decision = None
            elif decision.order:
                winner = decision.order[0].thing
                taken[winner] = taken.get(winner, 0) + 1
            decisions.append(decision)
            decide_s.append(time.perf_counter() - t0)
        batch = [
            {"task_id": r.task_id, "model": r.model, "region": r.region, "hold_s": r.hold_s,
             "exclude": r.exclude, "order": [x.thing for x in d.order]}
            for r, d in zip(reqs, decisions)
            if d is not None and d.order
        ]
        t0 = time.perf_counter()
        reserved_all = self.live.reserve_many(batch, now=now)
        t_reserve = time.perf_counter() - t0
        for thing, _position, skipped in reserved_all:
            self._follow(thing, skipped)
        reserved = iter(reserved_all)
        outcomes: list[Outcome] = []
        for req, decision, own_s in zip(reqs, decisions, decide_s):
            if decision is None:
                outcomes.append(self.place_explained(req))
                continue
            timing = (t_start, t_fetch, t_reserve, own_s, len(reqs))
            if not decision.order:
                reason = explain(decision, req, w, None, ())
                reason["timing_us"] = _batch_timing(*timing)
                outcomes.append(Outcome(None, reason))
                continue
            thing, position, skipped = next(reserved)
            if thing is None:  # every device it tried filled up meanwhile: a fresh look, alone
                outcomes.append(self.place_explained(req))
                continue
            placement = self._placement(req, decision, thing, position, skipped, t_start, t_fetch, t_reserve)
            placement.reason["timing_us"] = _batch_timing(*timing)
            outcomes.append(Outcome(placement, {}))
        return outcomes

    def release(self, thing: str, task_id: str) -> bool:
        """Give the task's slot back; idempotent (``False`` when nothing was held)."""
        released = self.live.release(thing, task_id, now=self.clock())
        if released:
            self.view.released(thing)
        return released

    @staticmethod
    def _validate(req: PlacementRequest) -> None:
        if not TASK_ID_RE.match(req.task_id):  # task ids become key parts and "\t"-joined members
            raise ValueError(f"invalid task id: {req.task_id!r}")
        if not req.hold_s > 0:
            raise ValueError("hold_s must be > 0")

    def _decide(self, req: PlacementRequest, now: float, fresh: bool = False) -> tuple[Decision, float]:
        w = self.weights
        t0 = time.perf_counter()
        ((total, candidates, viewed),) = self._first_pages([req], now, fresh)
        fetch_s = time.perf_counter() - t0
        decision = decide(candidates, req, w, self.rng)
        if viewed and not decision.order:
            # Nothing fits what the view holds: it may miss devices that joined or freed a slot
            # since, so "nothing fits" is only ever said on a fresh fetch.
            decision, more_s = self._decide(req, now, fresh=True)
            return decision, fetch_s + more_s
        offset = w.index_candidates
        for page in range(1, w.max_pages + 1):
            # More pages only while the filters (exclusions, ctx, hash) reject everything fetched.
            if decision.order or total <= offset:
                break
            t0 = time.perf_counter()
            more = self.live.fetch(
                req.model,
                req.region,
                req.near,
                top=w.index_candidates,
                sample=0,
                # Later pages read 4x more devices per grid cell around the client (no offset in cells).
                nearest=min(w.near_candidates * 4**page, 64),
                offset=offset,
                now=now,
            )
            fetch_s += time.perf_counter() - t0
            total = more.total
            candidates += more.candidates
            decision = decide(candidates, req, w, self.rng)
            offset += w.index_candidates
        return decision, fetch_s

    def _first_pages(
        self, reqs: Sequence[PlacementRequest], now: float, fresh: bool = False
    ) -> list[tuple[int, list[Candidate], bool]]:
        """Each request's first candidate page: (devices in its free index, candidates, whether
        the index part came from the view), in one round trip or none.

        The index part (head + random sample) comes from the view while it is fresh (see
        ``ig3.scheduler.view``), else from one fetch per (model, region) of the batch, which
        refreshes the view; a request with a location adds its own grid cells (a fetch without the
        index part when the view served it). Without the view (``index_view_ms`` = 0) every request
        fetches everything itself, one script call each, in one pipeline."""
        w = self.weights
        view = self.view
        grid = w.near_candidates
        if not view.enabled:
            queries = [
                {"model": r.model, "region": r.region, "near": r.near, "top": w.index_candidates,
                 "sample": w.random_candidates, "nearest": grid, "offset": 0}
                for r in reqs
            ]
            return [(f.total, f.candidates, False) for f in self.live.fetch_many(queries, now=now)]
        heads: dict[tuple[str, str | None], tuple[int, list[Candidate], list[Candidate]]] = {}
        ageing: set[tuple[str, str | None]] = set()  # past half their life: renewed by a fetch made anyway
        if not fresh:
            for r in reqs:
                key = (r.model, r.region)
                if key not in heads:
                    entry = view.get(r.model, r.region, now)
                    if entry is not None:
                        heads[key] = (entry.total, entry.top, entry.pool)
                        if view.ageing(entry, now):
                            ageing.add(key)
        planned: dict[tuple[str, str | None], int] = {}  # key -> the query that fetches its head
        queries: list[dict[str, Any]] = []
        asks: list[int | None] = []  # per request: its query, if it has one
        for r in reqs:
            key = (r.model, r.region)
            # A request with a location makes a round trip anyway: when its head is ageing, the
            # same script call renews it, so requests without one rarely wait for a refetch.
            if key not in planned and (key not in heads or (key in ageing and r.near is not None and grid > 0)):
                planned[key] = len(queries)
                asks.append(len(queries))
                queries.append({"model": r.model, "region": r.region, "near": r.near,
                                "top": w.index_candidates, "sample": w.random_candidates * POOL_FACTOR,
                                "nearest": grid, "offset": 0})
            elif r.near is not None and grid > 0:
                asks.append(len(queries))
                queries.append({"model": r.model, "region": r.region, "near": r.near, "top": 0,
                                "sample": 0, "nearest": grid, "offset": 0})
            else:
                asks.append(None)
        fetched: list[Fetched] = self.live.fetch_many(queries, now=now) if queries else []
        for key, at in planned.items():
            f = fetched[at]
            top, pool = f.candidates[: f.top], f.candidates[f.top : f.index]
            heads[key] = (f.total, top, pool)
            view.put(key[0], key[1], f.total, top, pool, now)
        out = []
        sample = w.random_candidates
        for r, ask in zip(reqs, asks):
            total, top, pool = heads[(r.model, r.region)]
            index = index_candidates(top, pool, sample, self.rng)
            near: list[Candidate] = []
            if ask is not None:
                f = fetched[ask]
                near = f.candidates[f.index :]
                total = f.total  # the freshest count
            out.append((total, index + near, (r.model, r.region) not in planned))
        return out

    def _follow(self, thing: str | None, skipped: Sequence[str]) -> None:
        """The view follows this dispatcher's reservations (see ``ig3.scheduler.view``)."""
        if thing is not None:
            self.view.reserved(thing, skipped)
        else:
            self.view.forget(skipped)

    def _placement(
        self,
        req: PlacementRequest,
        decision: Decision,
        thing: str,
        position: int,
        skipped: list[str],
        t_start: float,
        t_fetch: float,
        t_reserve: float,
    ) -> Placement:
        scored = next((s for s in decision.order if s.thing == thing), None)
        reason = explain(decision, req, self.weights, thing, skipped)
        if position == 0:
            reason["why"] = f"{thing} already holds this task's reservation (repeated placement)"
        reason["timing_us"] = _timing(t_start, t_fetch, t_reserve)
        if scored is not None:
            model_hash = scored.model_hash
        else:  # a repeated placement kept a device this fetch did not return
            model_hash = (self.live.offer(thing, req.model) or {}).get("sha256")
        return Placement(
            thing=thing, model_hash=model_hash, score=scored.score if scored else 0.0, reason=reason
        )


def _with_reserved(c: Candidate, extra: int) -> Candidate:
    # A copy: the fetched candidate objects are per request, but never mutate what a caller holds.
    return replace(c, reserved=c.reserved + extra)


def _batch_timing(t_start: float, t_fetch: float, t_reserve: float, own_decide_s: float, n: int) -> dict:
    """A batch member's timing: the batch's wall time and shared round trips, its own decision."""
    return {
        "total": round((time.perf_counter() - t_start) * 1e6, 1),
        "fetch": round(t_fetch * 1e6, 1),
        "reserve": round(t_reserve * 1e6, 1),
        "decide": round(own_decide_s * 1e6, 1),
        "batch": n,
    }


def _timing(t_start: float, t_fetch: float, t_reserve: float) -> dict[str, float]:
    total = time.perf_counter() - t_start
    return {
        "total": round(total * 1e6, 1),
        "fetch": round(t_fetch * 1e6, 1),
        "reserve": round(t_reserve * 1e6, 1),
        "decide": round((total - t_fetch - t_reserve) * 1e6, 1),
    }
