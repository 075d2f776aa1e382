"""Scheduler.place_many (one SQS batch in two round trips) against the real Redis."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest
import redis
from ig3.scheduler import LiveState, PlacementRequest, Scheduler, Weights

from tests.scheduler.test_scheduler_concurrency import _fleet, _run_threads
from tests.scheduler.test_scheduler_live import NOW, beat, req, sched, synthetic_fleet

pytestmark = pytest.mark.integration


def _count_round_trips(live, monkeypatch) -> list[int]:
    """Writes to the decision path's own connection (one per round trip: redis-py's send_command
    goes through send_packed_command)."""
    conn = live._fetch.lane.connection()
    conn.connect()  # its handshake (HELLO, CLIENT SETINFO) is not a decision's round trip
    sent = [0]
    original = conn.send_packed_command

    def counting(*args, **kwargs):
        sent[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(conn, "send_packed_command", counting)
    return sent


def test_a_batch_spreads_over_devices_in_two_round_trips(live, monkeypatch):
    # Five one-slot devices, the first clearly the best: five tasks placed one by one would all
    # pick it first; the batch's decisions count each other's winners, so no reservation collides.
    live.apply_heartbeats(
        [beat(f"d{i}", cap=1, tps=80.0 if i == 0 else 20.0 - i) for i in range(5)], now=NOW
    )
    s = sched(live, temperature=0.0)
    sent = _count_round_trips(live, monkeypatch)
    outcomes = s.place_many([req(f"t{i}") for i in range(5)])
    assert sent[0] == 2  # five fetches in one pipeline, then one reservation script for all five
    things = [o.placement.thing for o in outcomes]
    assert sorted(things) == [f"d{i}" for i in range(5)]
    assert things[0] == "d0"
    for o in outcomes:
        assert o.placement.reason["timing_us"]["batch"] == 5
        assert o.placement.reason["skipped"] == []
        assert o.placement.model_hash == "sha-m1"
    assert all(live.get(f"d{i}", now=NOW)["reserved"] == 1 for i in range(5))


def test_more_tasks_than_slots_leaves_the_rest_unplaced_with_a_reason(live):
    live.apply_heartbeats([beat("a", cap=2), beat("b", cap=1)], now=NOW)
    outcomes = sched(live).place_many([req(f"t{i}") for i in range(5)])
    placed = Counter(o.placement.thing for o in outcomes if o.placement)
    assert placed == {"a": 2, "b": 1}
    unplaced = [o for o in outcomes if o.placement is None]
    assert len(unplaced) == 2
    for o in unplaced:
        assert "no device fits model 'm1'" in o.reason["why"]


def test_the_batch_keeps_the_order_and_the_constraints_of_each_request(live):
    live.apply_heartbeats(
        [beat("eu1", region="eu"), beat("us1", region="us", lat=40.0, lon=-74.0),
         beat("big", models=("m1", "m2"), ctx=8192)],
        now=NOW,
    )
    outcomes = sched(live).place_many(
        [req("t-us", region="us"), req("t-m2", model="m2"), req("t-ctx", min_ctx=8000), req("t-none", model="zz")]
    )
    assert outcomes[0].placement.thing == "us1"
    assert outcomes[1].placement.thing == "big"
    assert outcomes[2].placement.thing == "big"
    assert outcomes[3].placement is None


def test_a_repeated_batch_and_a_duplicate_task_hold_one_slot_each(live):
    live.apply_heartbeats([beat(f"d{i}", cap=1) for i in range(4)], now=NOW)
    s = sched(live)
    first = s.place_many([req("t0"), req("t1"), req("t0")])  # at-least-once: t0 twice in one batch
    assert first[0].placement.thing == first[2].placement.thing
    again = s.place_many([req("t1"), req("t0")])
    assert again[0].placement.thing == first[1].placement.thing
    assert again[1].placement.thing == first[0].placement.thing
    assert "already holds" in again[0].placement.reason["why"]
    held = sum(live.get(f"d{i}", now=NOW)["reserved"] for i in range(4))
    assert held == 2


def test_requests_the_first_page_cannot_serve_are_paged_alone(live):
    # 30 devices; the task excludes the best 20 (index order): the first page is all excluded.
    beats = [beat(f"d{i:02d}", tps=100.0 - i) for i in range(30)]
    live.apply_heartbeats(beats, now=NOW)
    s = sched(live, index_candidates=8, random_candidates=0, near_candidates=0)
    excluded = frozenset(f"d{i:02d}" for i in range(20))
    outcomes = s.place_many([req("t-x", exclude=excluded), req("t-plain")])
    assert outcomes[0].placement is not None and outcomes[0].placement.thing not in excluded
    assert "batch" not in outcomes[0].placement.reason["timing_us"]  # finished by place_explained
    assert outcomes[1].placement.reason["timing_us"]["batch"] == 2


def test_batches_match_single_placements_on_a_larger_fleet(live, r, redis_prefix):
    live.apply_heartbeats(synthetic_fleet(600), now=NOW)
    rng = random.Random(5)
    reqs = [
        req(f"t{i}", near=(rng.uniform(-50, 65), rng.uniform(-170, 170)) if i % 2 else None,
            region=rng.choice(("eu", "us", None)))
        for i in range(200)
    ]
    s = sched(live)
    batched = []
    for start in range(0, len(reqs), 10):
        batched += s.place_many(reqs[start : start + 10])
    assert all(o.placement is not None for o in batched)
    for q, o in zip(reqs, batched):
        assert q.region is None or live.get(o.placement.thing, now=NOW)["region"] == q.region
    per_device = Counter(o.placement.thing for o in batched)
    for thing, n in per_device.items():
        state = live.get(thing, now=NOW)
        assert n == state["reserved"] <= state["capacity"]


def test_concurrent_batches_never_overfill_a_device(redis_url, redis_prefix):
    setup = LiveState(redis.Redis.from_url(redis_url), prefix=redis_prefix)
    fleet = _fleet(12, NOW)
    setup.apply_heartbeats(fleet, now=NOW)
    slots = sum(b.load.capacity for b in fleet)
    placed: list[tuple[str, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def dispatcher(i):
        live = LiveState(redis.Redis.from_url(redis_url), prefix=redis_prefix)
        s = Scheduler(live, Weights(top_k=3, near_candidates=4), random.Random(i), clock=lambda: NOW)
        barrier.wait()
        for j in range(5):
            batch = [PlacementRequest(task_id=f"t{i}-{j}-{k}", model="m", near=(48.5, 2.5)) for k in range(10)]
            for q, o in zip(batch, s.place_many(batch)):
                if o.placement is not None:
                    with lock:
                        placed.append((o.placement.thing, q.task_id))

    _run_threads(8, dispatcher)
    capacity = {b.thing: b.load.capacity for b in fleet}
    per_device = Counter(thing for thing, _ in placed)
    assert len(placed) == slots  # 400 attempts for fewer slots: every slot taken, none twice
    for thing, n in per_device.items():
        assert n == capacity[thing] == setup.get(thing, now=NOW)["reserved"]


def test_a_flushed_script_cache_is_reloaded_for_the_pipelined_fetch(live, r):
    live.apply_heartbeats([beat(f"d{i}") for i in range(3)], now=NOW)
    s = sched(live)
    s.place_many([req("warm-a"), req("warm-b")])
    r.script_flush()
    outcomes = s.place_many([req("t0"), req("t1"), req("t2")])
    assert all(o.placement is not None for o in outcomes)


def test_invalid_requests_in_a_batch_raise_before_anything_is_reserved(live):
    live.apply_heartbeats([beat("d0", cap=4)], now=NOW)
    s = sched(live)
    with pytest.raises(ValueError):
        s.place_many([req("ok-1"), req("bad id with spaces")])
    assert live.get("d0", now=NOW)["reserved"] == 0
