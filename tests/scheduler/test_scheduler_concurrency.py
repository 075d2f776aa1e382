"""Many dispatchers against few slots, on the real Redis: the Lua reservation never overfills."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest
import redis
from ig3.scheduler import LiveState, PlacementRequest, Scheduler, Weights
from ig3.wire import DeviceLoad, Heartbeat, Location, ModelInfo

pytestmark = pytest.mark.integration


def _fleet(n_devices: int, now: float):
    rng = random.Random(4)
    return [
        Heartbeat(
            thing=f"c{i}",
            ts=now,
            region="eu",
            location=Location(lat=48 + rng.random(), lon=2 + rng.random()),
            load=DeviceLoad(capacity=rng.randint(1, 3)),
            tokens_per_s=rng.uniform(5, 50),
            models=[ModelInfo(name="m")],
        )
        for i in range(n_devices)
    ]


def _run_threads(n, target):
    errors: list[BaseException] = []

    def wrapped(i):
        try:
            target(i)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors


def test_concurrent_dispatchers_never_overfill_a_device(redis_url, redis_prefix):
    now = 1_800_000_000.0
    setup = LiveState(redis.Redis.from_url(redis_url), prefix=redis_prefix)
    fleet = _fleet(12, now)
    setup.apply_heartbeats(fleet, now=now)
    slots = sum(b.load.capacity for b in fleet)
    placed: list[tuple[str, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def dispatcher(i):
        # Each thread is its own dispatcher: own client, own scheduler, own random draw.
        live = LiveState(redis.Redis.from_url(redis_url), prefix=redis_prefix)
        s = Scheduler(live, Weights(top_k=3, near_candidates=4), random.Random(i), clock=lambda: now)
        barrier.wait()
        for j in range(25):
            p = s.place(PlacementRequest(task_id=f"t{i}-{j}", model="m", near=(48.5, 2.5)))
            if p is not None:
                with lock:
                    placed.append((p.thing, f"t{i}-{j}"))

    _run_threads(16, dispatcher)
    per_device = Counter(thing for thing, _ in placed)
    capacity = {b.thing: b.load.capacity for b in fleet}
    assert len(placed) == slots  # 400 attempts for fewer slots: every slot taken, none twice
    for thing, n in per_device.items():
        assert n == capacity[thing]
        assert setup.get(thing, now=now)["reserved"] == n
    assert setup.catalogue()[0]["free_capacity"] == 0

    # Concurrent releases (each twice, from two threads): every slot comes back exactly once.
    released = Counter()

    def releaser(i):
        live = LiveState(redis.Redis.from_url(redis_url), prefix=redis_prefix)
        for thing, task in placed[i % 2 :: 2] + placed[(i + 1) % 2 :: 2]:
            if live.release(thing, task, now=now):
                with lock:
                    released[task] += 1

    _run_threads(4, releaser)
    assert len(released) == slots and set(released.values()) == {1}
    assert setup.catalogue()[0]["free_capacity"] == slots


def test_concurrent_repeats_of_one_task_hold_one_slot(redis_url, redis_prefix):
    now = 1_800_000_000.0
    setup = LiveState(redis.Redis.from_url(redis_url), prefix=redis_prefix)
    setup.apply_heartbeats(_fleet(6, now), now=now)
    got: list[str] = []
    lock = threading.Lock()

    def dispatcher(i):
        live = LiveState(redis.Redis.from_url(redis_url), prefix=redis_prefix)
        s = Scheduler(live, Weights(), random.Random(i), clock=lambda: now)
        p = s.place(PlacementRequest(task_id="same-task", model="m"))
        with lock:
            got.append(p.thing)

    _run_threads(8, dispatcher)
    assert len(set(got)) == 1  # at-least-once delivery of one task never takes two slots
    assert sum(setup.get(f"c{i}", now=now)["reserved"] for i in range(6)) == 1


def test_threads_sharing_one_scheduler_use_their_own_connections(redis_url, redis_prefix):
    now = 1_800_000_000.0
    live = LiveState(redis.Redis.from_url(redis_url), prefix=redis_prefix)
    fleet = _fleet(10, now)
    live.apply_heartbeats(fleet, now=now)
    s = Scheduler(live, Weights(), random.Random(0), clock=lambda: now)
    placed: list[str] = []
    lock = threading.Lock()

    def dispatcher(i):
        for j in range(10):
            p = s.place(PlacementRequest(task_id=f"s{i}-{j}", model="m"))
            if p is not None:
                with lock:
                    placed.append(p.thing)

    _run_threads(8, dispatcher)
    assert len(placed) == sum(b.load.capacity for b in fleet)
    for thing, n in Counter(placed).items():
        assert live.get(thing, now=now)["reserved"] == n


def test_a_dropped_connection_is_reopened(redis_url, redis_prefix):
    now = 1_800_000_000.0
    r = redis.Redis.from_url(redis_url)
    live = LiveState(r, prefix=redis_prefix)
    live.apply_heartbeats(_fleet(3, now), now=now)
    s = Scheduler(live, Weights(), random.Random(0), clock=lambda: now)
    assert s.place(PlacementRequest(task_id="before", model="m")) is not None
    conn = live._fetch.lane.connection()
    conn.send_command("CLIENT", "ID")
    r.client_kill_filter(_id=conn.read_response())  # only the connection this test opened
    assert s.place(PlacementRequest(task_id="after", model="m")) is not None
