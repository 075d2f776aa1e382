"""The scheduler: bounded candidate fetch -> pure decision -> atomic reservation.

Two Redis round trips per decision, whatever the fleet size: one script returns a bounded
candidate set (``LiveState.candidates``), the pure core (``ig3.scheduler.core``) filters, scores
and draws in Python, one script reserves a slot on the drawn device — re-checking it inside
Redis and falling through to the next-best in the same call if it filled up meanwhile. Only when
every device tried was full (a burst of concurrent dispatchers) is the fetch repeated once; the
reservation script has already taken those devices out of the free index by then.

Why decide in Python rather than inside the Lua script: the decision is the part that changes
(weights, reputation, SLOs) and the part worth property-testing; the scripts stay small and
obviously atomic. The cost is one extra round trip (~0.1 ms locally), measured in
``bench/bench_scheduler.py``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ig3.scheduler.core import Candidate, Decision, Placement, PlacementRequest, Weights, decide, explain
from ig3.scheduler.live import LiveState
from ig3.wire import TASK_ID_RE

_RESERVE_ROUNDS = 2


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
        for _round in range(_RESERVE_ROUNDS):
            now = self.clock()
            decision, fetch_s = self._decide(req, now)
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
        fetched = self.live.candidates_many(
            [
                {"model": r.model, "region": r.region, "near": r.near, "top": w.index_candidates,
                 "sample": w.random_candidates, "nearest": w.near_candidates, "offset": 0}
                for r in reqs
            ],
            now=now,
        )
        t_fetch = time.perf_counter() - t0
        taken: dict[str, int] = {}  # slots the batch's earlier winners will take, per device
        decisions: list[Decision | None] = []
        decide_s: list[float] = []
        for req, (total, cands) in zip(reqs, fetched):
            t0 = time.perf_counter()
            if taken:
                cands = [_with_reserved(c, taken[c.thing]) if c.thing in taken else c for c in cands]
            decision = decide(cands, req, w, self.rng)
            if not decision.order and total > w.index_candidates:
                decision = None  # filters rejected the first page: paged alone below
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
        reserved = iter(self.live.reserve_many(batch, now=now))
        t_reserve = time.perf_counter() - t0
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
        return self.live.release(thing, task_id, now=self.clock())

    @staticmethod
    def _validate(req: PlacementRequest) -> None:
        if not TASK_ID_RE.match(req.task_id):  # task ids become key parts and "\t"-joined members
            raise ValueError(f"invalid task id: {req.task_id!r}")
        if not req.hold_s > 0:
            raise ValueError("hold_s must be > 0")

    def _decide(self, req: PlacementRequest, now: float) -> tuple[Decision, float]:
        w = self.weights
        fetch_s = 0.0
        candidates = []
        offset = 0
        for page in range(w.max_pages + 1):
            t0 = time.perf_counter()
            total, batch = self.live.candidates(
                req.model,
                req.region,
                req.near,
                top=w.index_candidates,
                sample=w.random_candidates if page == 0 else 0,
                # Later pages read 4x more devices per grid cell around the client (no offset in cells).
                nearest=min(w.near_candidates * 4**page, 64),
                offset=offset,
                now=now,
            )
            fetch_s += time.perf_counter() - t0
            candidates += batch
            decision = decide(candidates, req, w, self.rng)
            # More pages only while the filters (exclusions, ctx, hash) reject everything fetched.
            if decision.order or total <= offset + w.index_candidates:
                return decision, fetch_s
            offset += w.index_candidates
        return decision, fetch_s

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
