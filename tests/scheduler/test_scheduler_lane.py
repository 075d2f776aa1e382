"""The decision path's connection lane: its bounded busy-wait for replies (real Redis)."""

from __future__ import annotations

import time

import pytest
import redis
from ig3.scheduler import LiveState
from ig3.scheduler.live import DEFAULT_SPIN_US, SPIN_ENV

from tests.scheduler.test_scheduler_live import NOW, beat

pytestmark = pytest.mark.integration


def _connected_lane(r, redis_prefix, spin_us):
    lane = LiveState(r, prefix=redis_prefix, spin_us=spin_us)._fetch.lane
    conn = lane.connection()
    conn.connect()
    return lane, conn


def _wait(lane, conn) -> float:
    """Seconds ``await_reply`` waited on a connection that was sent nothing."""
    t0 = time.perf_counter()
    lane.await_reply(conn)
    return time.perf_counter() - t0


def test_spin_bound_defaults_and_follows_env(r, redis_prefix, monkeypatch):
    monkeypatch.delenv(SPIN_ENV, raising=False)
    assert LiveState(r, prefix=redis_prefix)._fetch.lane.spin_s == DEFAULT_SPIN_US / 1e6
    monkeypatch.setenv(SPIN_ENV, "0")
    assert LiveState(r, prefix=redis_prefix)._fetch.lane.spin_s == 0
    monkeypatch.setenv(SPIN_ENV, "50")
    assert LiveState(r, prefix=redis_prefix)._fetch.lane.spin_s == pytest.approx(50e-6)
    # The argument wins over the environment.
    assert LiveState(r, prefix=redis_prefix, spin_us=0)._fetch.lane.spin_s == 0


@pytest.mark.parametrize("raw", ["fast", "-1", "inf", "nan", "1e9"])
def test_a_malformed_spin_bound_is_refused(r, redis_prefix, monkeypatch, raw):
    monkeypatch.setenv(SPIN_ENV, raw)
    with pytest.raises(ValueError, match=SPIN_ENV):
        LiveState(r, prefix=redis_prefix)


def test_waiting_for_a_reply_that_never_comes_gives_up_and_consumes_nothing(r, redis_prefix):
    lane, conn = _connected_lane(r, redis_prefix, 2000)
    assert _wait(lane, conn) >= 0.002  # nothing was sent: it stops at its bound, never hangs
    conn.send_command("PING")
    lane.await_reply(conn)
    assert conn.read_response() in (b"PONG", "PONG")  # the connection is still in step


@pytest.mark.parametrize("spin_us", [0, 300])
def test_spinning_and_blocking_lanes_read_the_same_replies(redis_url, redis_prefix, spin_us):
    """The same fetches (no random sample), single and pipelined, with and without the busy-wait."""
    r = redis.Redis.from_url(redis_url)
    reference = LiveState(r, prefix=redis_prefix, spin_us=0)
    reference.apply_heartbeats(
        [beat(f"dev-{i}", lat=50.0 + i * 0.01, lon=8.0, cap=1 + i % 3) for i in range(40)], now=NOW
    )
    live = LiveState(r, prefix=redis_prefix, spin_us=spin_us)
    queries = [
        {"model": "m1", "region": None, "near": (50.1, 8.0), "top": 5, "sample": 0, "nearest": 8, "offset": 0},
        {"model": "m1", "region": "eu", "near": None, "top": 8, "sample": 0, "nearest": 0, "offset": 2},
        {"model": "m1", "region": "us", "near": None, "top": 8, "sample": 0, "nearest": 0, "offset": 0},
    ]
    want = [
        reference.fetch(q["model"], q["region"], q["near"], top=q["top"], sample=0, nearest=q["nearest"],
                        offset=q["offset"], now=NOW)
        for q in queries
    ]
    assert want[0].candidates and not want[2].candidates  # a fetch with devices, one without
    assert live.fetch_many(queries, now=NOW) == want
    for q, expected in zip(queries, want):
        assert live.fetch(q["model"], q["region"], q["near"], top=q["top"], sample=0, nearest=q["nearest"],
                          offset=q["offset"], now=NOW) == expected


def test_only_a_lane_used_by_one_thread_spins(r, redis_prefix):
    import threading

    lane, conn = _connected_lane(r, redis_prefix, 50_000)
    assert _wait(lane, conn) >= 0.05  # alone: it waited for a reply that never came
    other = threading.Thread(target=lane.connection)  # a second dispatcher thread
    other.start()
    other.join()
    assert lane._users == 2
    # Not a timing claim: with two users the wait returns at once, long before its 50 ms bound.
    assert _wait(lane, conn) < 0.05
