"""The dispatcher's view of each index head (ig3.scheduler.view): pure rules, then the scheduler
deciding on it against the real Redis (staleness never overfills, "nothing fits" only on a fresh
fetch, far requests skip the fetch script, near ones renew an ageing head)."""

from __future__ import annotations

import random
import threading

import pytest
from ig3.scheduler import Candidate, LiveState, PlacementRequest, Scheduler, Weights
from ig3.scheduler.view import MAX_ENTRIES, IndexView, index_candidates
from ig3.wire import DeviceLoad, Heartbeat, Location, ModelInfo

NOW = 1_800_000_000.0


class Perf:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def cand(thing, cap=2, reserved=0, in_flight=0):
    return Candidate(thing, cap, in_flight, reserved)


# -- pure rules ------------------------------------------------------------------------------


def test_an_entry_lives_ttl_on_both_clocks():
    perf = Perf()
    v = IndexView(0.25, perf=perf)
    v.put("m", None, 3, [cand("a"), cand("b")], [cand("c")], NOW)
    assert v.get("m", None, NOW + 0.2) is not None
    assert v.get("m", None, NOW + 0.25) is None  # the scheduler's clock moved past the ttl
    assert v.get("m", "eu", NOW) is None  # per (model, region)
    perf.t += 0.3
    assert v.get("m", None, NOW) is None  # a frozen clock (tests, replays) still expires it
    perf.t -= 0.3
    assert v.get("m", None, NOW - 1) is None  # a clock that went back: not trusted


def test_ageing_is_past_half_life():
    perf = Perf()
    v = IndexView(1.0, perf=perf)
    v.put("m", None, 1, [cand("a")], [], NOW)
    e = v.get("m", None, NOW)
    assert not v.ageing(e, NOW + 0.4)
    assert v.ageing(e, NOW + 0.5)
    perf.t += 0.6
    assert v.ageing(e, NOW)


def test_an_empty_index_is_not_kept_and_zero_ttl_keeps_nothing():
    v = IndexView(1.0)
    v.put("m", None, 0, [], [], NOW)
    assert v.get("m", None, NOW) is None  # a device may join any moment
    off = IndexView(0)
    assert not off.enabled
    off.put("m", None, 1, [cand("a")], [], NOW)
    assert off.get("m", None, NOW) is None


def test_own_reservations_count_and_a_full_device_leaves():
    v = IndexView(1.0)
    a, b = cand("a", cap=2), cand("b", cap=1)
    v.put("m", None, 4, [a, b, cand("c"), cand("d")], [], NOW)
    v.put("m", "eu", 2, [cand("a", cap=2)], [], NOW)
    v.reserved("a")
    e, eu = v.get("m", None, NOW), v.get("m", "eu", NOW)
    assert [c.thing for c in e.top] == ["a", "b", "c", "d"] and e.top[0].reserved == 1
    assert eu.top[0].reserved == 1  # a device's slots are device-wide: every entry follows
    v.reserved("a")
    assert [c.thing for c in v.get("m", None, NOW).top] == ["b", "c", "d"]
    v.released("b")  # nothing reserved through this view: no negative counts
    assert v.get("m", None, NOW).top[0].reserved == 0


def test_the_in_flight_count_is_respected_like_redis_does():
    v = IndexView(1.0)
    v.put("m", None, 1, [cand("a", cap=3, in_flight=2), cand("x"), cand("y"), cand("z")], [], NOW)
    v.reserved("a")  # busy = max(in_flight 2, reserved 1) = 2: one free slot left
    assert "a" in v.get("m", None, NOW).by_name
    v.reserved("a")  # max(2, 2): still one
    assert "a" in v.get("m", None, NOW).by_name
    v.reserved("a")
    assert "a" not in v.get("m", None, NOW).by_name


def test_skipped_and_forgotten_devices_leave_every_entry():
    v = IndexView(1.0)
    v.put("m", None, 4, [cand("a"), cand("b"), cand("c"), cand("d")], [cand("e")], NOW)
    v.reserved("b", skipped=["a"])
    e = v.get("m", None, NOW)
    assert [c.thing for c in e.top] == ["b", "c", "d"]
    v.forget(["e"])
    assert v.get("m", None, NOW).pool == []


def test_refetched_when_half_the_head_is_gone():
    v = IndexView(10.0)
    v.put("m", None, 4, [cand("a", cap=1), cand("b", cap=1), cand("c"), cand("d")], [], NOW)
    v.reserved("a")
    assert v.get("m", None, NOW) is not None  # 3 of 4 left
    v.reserved("b")
    assert v.get("m", None, NOW) is None  # 2 of 4: decisions would lose their best


def test_index_candidates_draw_the_sample_from_the_pool():
    v = IndexView(1.0)
    pool = [cand(f"p{i}") for i in range(16)]
    v.put("m", None, 20, [cand("a")], pool, NOW)
    e = v.get("m", None, NOW)
    rng = random.Random(1)
    draws = [index_candidates(e.top, e.pool, 4, rng) for _ in range(20)]
    assert all(d[0].thing == "a" and len(d) == 5 for d in draws)
    assert len({tuple(c.thing for c in d[1:]) for d in draws}) > 1  # decisions differ between refetches
    assert len({c.thing for d in draws for c in d[1:]}) > 8
    # A pool smaller than the sample is taken whole.
    assert [c.thing for c in index_candidates(e.top, pool[:2], 4, rng)] == ["a", "p0", "p1"]


def test_entries_are_bounded():
    perf = Perf()
    v = IndexView(100.0, perf=perf)
    for i in range(MAX_ENTRIES + 5):
        perf.t += 0.001
        v.put(f"m{i}", None, 1, [cand("a")], [], NOW)
    assert len(v._entries) == MAX_ENTRIES
    assert v.get("m0", None, NOW) is None and v.get(f"m{MAX_ENTRIES + 4}", None, NOW) is not None


def test_weights_validate_the_view_ttl():
    assert Weights(index_view_ms=0).index_view_ms == 0
    with pytest.raises(ValueError):
        Weights(index_view_ms=-1)
    with pytest.raises(ValueError):
        Weights(index_view_ms=float("inf"))
    assert Weights.from_env({"IG3_SCHED_INDEX_VIEW_MS": "1000"}).index_view_ms == 1000.0


# -- on the real Redis -----------------------------------------------------------------------


def beat(thing, *, cap=2, region="eu", lat=50.0, lon=8.0, ctx=4096, tps=20.0, ts=NOW):
    return Heartbeat(
        thing=thing,
        ts=ts,
        region=region,
        location=Location(lat=lat, lon=lon),
        load=DeviceLoad(capacity=cap, in_flight=0),
        tokens_per_s=tps,
        models=[ModelInfo(name="m1", ctx=ctx, sha256="sha-m1")],
    )


class CountingFetch:
    """The live state's fetch script, counted (every call still runs on Redis)."""

    def __init__(self, script):
        self.script = script
        self.calls: list[list] = []

    def __call__(self, key, args):
        self.calls.append(list(args))
        return self.script(key, args)

    def pipelined(self, key, arg_lists):
        self.calls += [list(a) for a in arg_lists]
        return self.script.pipelined(key, arg_lists)


def spied(live):
    spy = CountingFetch(live._fetch)
    live._fetch = spy
    return spy


def sched(live, seed=0, clock=lambda: NOW, **weights):
    return Scheduler(live, Weights(**weights), random.Random(seed), clock=clock)


def req(task, **kw):
    return PlacementRequest(task_id=task, model=kw.pop("model", "m1"), hold_s=60.0, **kw)


@pytest.mark.integration
def test_requests_without_a_location_decide_on_the_view(live):
    live.apply_heartbeats([beat(f"d{i}", cap=4, tps=10.0 + i) for i in range(12)], now=NOW)
    spy = spied(live)
    s = sched(live, index_view_ms=60_000)
    placed = [s.place(req(f"t{i}")) for i in range(10)]
    assert all(p is not None for p in placed)
    assert len(spy.calls) == 1  # the first fetched the head (and a 4x pool); nine made no fetch
    assert spy.calls[0][7:10] == [8, 16, 8]  # n_top, pool, n_near
    # Every placement holds a real reservation, and none is over a device's capacity.
    for thing in {p.thing for p in placed}:
        state = live.get(thing, now=NOW)
        assert state["reserved"] <= state["capacity"]
    assert sum(live.get(f"d{i}", now=NOW)["reserved"] for i in range(12)) == 10
    # Requests with a location fetch their grid cells only: no index head, no sample.
    s.place(req("near", near=(50.0, 8.0)))
    assert spy.calls[-1][7:10] == [0, 0, 8]


@pytest.mark.integration
def test_without_the_view_every_decision_fetches(live):
    live.apply_heartbeats([beat(f"d{i}", cap=4) for i in range(4)], now=NOW)
    spy = spied(live)
    s = sched(live, index_view_ms=0)
    for i in range(3):
        assert s.place(req(f"t{i}")) is not None
    assert [c[7:10] for c in spy.calls] == [[8, 4, 8]] * 3


@pytest.mark.integration
def test_a_stale_view_never_overfills_two_dispatchers(live):
    """Two dispatchers with views of a long life take turns on a small fleet: whatever their
    copies say, the reservations never exceed the slots, and every slot gets used."""
    live.apply_heartbeats([beat(f"d{i}", cap=2) for i in range(5)], now=NOW)  # 10 slots
    a, b = sched(live, seed=1, index_view_ms=60_000), sched(live, seed=2, index_view_ms=60_000)
    a.place(req("warm-a")), b.place(req("warm-b"))  # both views hold every device with 2 free
    out = []
    for i in range(10):
        out.append((a if i % 2 else b).place(req(f"t{i}")))
    placed = [p for p in out if p is not None]
    assert len(placed) == 8  # 10 slots - the two warm-ups
    assert any(p.reason["skipped"] for p in placed)  # the other's reservations were found at commit
    for i in range(5):
        state = live.get(f"d{i}", now=NOW)
        assert state["reserved"] == 2
    assert a.place(req("over")) is None and b.place(req("over2")) is None


@pytest.mark.integration
def test_concurrent_dispatchers_on_views_stay_within_capacity(live):
    live.apply_heartbeats([beat(f"d{i}", cap=3) for i in range(20)], now=NOW)  # 60 slots
    results: list = []
    lock = threading.Lock()

    def dispatcher(k):
        s = sched(live, seed=k, index_view_ms=60_000)
        for i in range(20):
            outs = s.place_many([req(f"k{k}-{i}-{j}") for j in range(2)])
            with lock:
                results.extend(o.placement for o in outs)

    threads = [threading.Thread(target=dispatcher, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    placed = [p for p in results if p is not None]
    assert len(placed) == 60  # 160 asked, exactly the 60 slots given
    for i in range(20):
        assert live.get(f"d{i}", now=NOW)["reserved"] == 3


@pytest.mark.integration
def test_a_device_gone_since_the_view_is_skipped_and_dropped(live):
    others = [beat(f"slow{i}", cap=4, tps=1.0) for i in range(3)]
    live.apply_heartbeats([beat("gone", cap=4, tps=80.0), beat("stays", cap=4, tps=5.0), *others], now=NOW)
    s = sched(live, index_view_ms=60_000, top_k=1, temperature=0)
    assert s.place(req("t0")).thing == "gone"  # the best by capability
    live.remove("gone")
    p = s.place(req("t1"))
    assert p.thing == "stays" and p.reason["skipped"] == ["gone"]
    assert "gone" not in s.view.get("m1", None, NOW).by_name
    assert s.place(req("t2")).reason["skipped"] == []


@pytest.mark.integration
def test_nothing_fits_is_only_said_on_a_fresh_fetch(live):
    live.apply_heartbeats([beat("small", ctx=2048)], now=NOW)
    spy = spied(live)
    s = sched(live, index_view_ms=60_000)
    assert s.place(req("t0")).thing == "small"
    live.apply_heartbeats([beat("big", ctx=32768)], now=NOW)  # joins after the view was taken
    p = s.place(req("t1", min_ctx=8192))
    assert p is not None and p.thing == "big"
    assert len(spy.calls) == 2  # the view had no fit: one fresh fetch, which renewed it
    assert "big" in s.view.get("m1", None, NOW).by_name
    assert s.place(req("t2", min_ctx=65536)) is None  # and a real no-fit says so, fresh
    # The batch path says so too.
    outs = s.place_many([req("b0", min_ctx=8192), req("b1", min_ctx=65536)])
    assert outs[0].placement.thing == "big" and outs[1].placement is None
    assert "no device fits" in outs[1].reason["why"]


@pytest.mark.integration
def test_a_near_request_renews_an_ageing_head(live):
    live.apply_heartbeats([beat(f"d{i}", cap=4) for i in range(6)], now=NOW)
    spy = spied(live)
    clock = [NOW]
    s = sched(live, clock=lambda: clock[0], index_view_ms=10_000)
    s.place(req("t0"))
    first = s.view.get("m1", None, NOW)
    clock[0] = NOW + 2.0
    s.place(req("t1", near=(50.0, 8.0)))
    assert spy.calls[-1][7:10] == [0, 0, 8]  # young: its grid cells only
    clock[0] = NOW + 6.0
    s.place(req("t2", near=(50.0, 8.0)))
    assert spy.calls[-1][7:10] == [8, 16, 8]  # past half its life: the same call renews the head
    renewed = s.view.get("m1", None, NOW + 6.0)
    assert renewed is not first and renewed.at == NOW + 6.0
    calls = len(spy.calls)
    clock[0] = NOW + 7.0
    s.place(req("t3"))
    assert len(spy.calls) == calls  # a request without a location: no round trip for the head


@pytest.mark.integration
def test_one_batch_fetches_each_head_once(live):
    live.apply_heartbeats([beat(f"d{i}", cap=4, region=("eu", "us")[i % 2]) for i in range(8)], now=NOW)
    spy = spied(live)
    s = sched(live, index_view_ms=60_000)
    outs = s.place_many(
        [req("a"), req("b"), req("c", region="us"), req("d", near=(50.0, 8.0)), req("e", region="us")]
    )
    assert all(o.placement is not None for o in outs)
    assert outs[2].placement.thing in {"d1", "d3", "d5", "d7"}
    shapes = sorted((c[4], *c[7:10]) for c in spy.calls)
    # one head per (model, region); the near request rides on the head fetched for "a"
    assert shapes == [("", 0, 0, 8), ("", 8, 16, 8), ("us", 8, 16, 8)]
