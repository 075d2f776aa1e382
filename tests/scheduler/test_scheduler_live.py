"""The Redis adapter and Scheduler against the real Redis (unique key prefix per test, never flushed)."""

from __future__ import annotations

import math
import random

import orjson
import pytest
import redis
from ig3.scheduler import LiveState, PlacementRequest, Scheduler, Weights, haversine_km
from ig3.scheduler.core import index_quality
from ig3.scheduler.lua import GRID_DEGREES, grid_cell
from ig3.wire import DeviceLoad, Heartbeat, Location, ModelInfo

pytestmark = pytest.mark.integration
NOW = 1_800_000_000.0


def beat(
    thing,
    *,
    ts=NOW,
    cap=2,
    in_flight=0,
    region="eu",
    lat=50.0,
    lon=8.0,
    tps=20.0,
    models=("m1",),
    ctx=4096,
    sha="sha-m1",
    status="online",
    model_tps=None,
):
    return Heartbeat(
        thing=thing,
        ts=ts,
        region=region,
        location=Location(lat=lat, lon=lon) if lat is not None else None,
        load=DeviceLoad(capacity=cap, in_flight=in_flight),
        tokens_per_s=tps,
        status=status,
        models=[
            ModelInfo(name=m, ctx=ctx, sha256=sha if m == "m1" else f"sha-{m}", tokens_per_s=model_tps)
            for m in models
        ],
    )


def sched(live, seed=0, **weights):
    return Scheduler(live, Weights(**weights), random.Random(seed), clock=lambda: NOW)


def req(task, **kw):
    return PlacementRequest(task_id=task, model=kw.pop("model", "m1"), **kw)


def synthetic_fleet(n, seed=1):
    """n devices around ~40 cities, 3 regions, 1-4 slots, a few models with different ctx."""
    rng = random.Random(seed)
    cities = [(rng.uniform(-50, 65), rng.uniform(-170, 170)) for _ in range(40)]
    out = []
    for i in range(n):
        clat, clon = cities[i % len(cities)]
        models = ["m1"] + (["m2"] if i % 3 == 0 else []) + (["rare"] if i % 150 == 0 else [])
        out.append(
            beat(
                f"dev-{i:05d}",
                cap=rng.randint(1, 4),
                region=("eu", "us", "ap")[i % 3],
                lat=max(-89.0, min(89.0, clat + rng.gauss(0, 1))),
                lon=max(-179.0, min(179.0, clon + rng.gauss(0, 1))),
                tps=rng.uniform(5, 60),
                models=models,
                ctx=rng.choice((2048, 8192)),
            )
        )
    return out


def check_consistency(live: LiveState, r, things, now=NOW):
    """Catalogue counters and free indexes agree with a recount of every device's live state
    (``things`` must be every device the test registered)."""
    per_model: dict[str, list] = {}
    extras: dict[str, dict] = {}
    for t in things:
        g = live.get(t, now=now)
        if g is None:
            for m in ("m1", "m2", "rare"):
                assert r.zscore(live.p + f"f:{m}", t) is None
            continue
        assert g["reserved"] <= g["capacity"] or g["reserved"] == 0
        for m in g["models"]:
            c = per_model.setdefault(m["name"], [0, 0, 0, {}])
            c[0] += 1
            c[1] += g["capacity"]
            c[2] += g["free"]
            c[3][g["region"]] = c[3].get(g["region"], 0) + 1
            e = extras.setdefault(m["name"], {"tps": [], "contexts": {}, "kinds": set()})
            tps = m["tokens_per_s"] or g["tokens_per_s"]
            if tps:
                e["tps"].append(tps)
            if m["ctx"]:
                e["contexts"][m["ctx"]] = e["contexts"].get(m["ctx"], 0) + 1
            e["kinds"].update(m["kinds"])
            listed = r.zscore(live.p + f"f:{m['name']}", t) is not None
            assert listed == (g["free"] > 0 and g["status"] == "online"), (t, g)
            assert (r.zscore(live.p + f"f:{m['name']}|{g['region']}", t) is not None) == listed
            for level in range(1, len(GRID_DEGREES) + 1):
                i, j = grid_cell(level, g["location"]["lat"], g["location"]["lon"])
                assert (r.zscore(live.p + f"x{level}:{m['name']}@{i},{j}", t) is not None) == listed
                assert (
                    r.zscore(live.p + f"x{level}:{m['name']}|{g['region']}@{i},{j}", t) is not None
                ) == listed
    # The decision path's snapshots and per-model offers mirror the device hashes.
    for t in things:
        g = live.get(t, now=now)
        raw = r.hget(live.p + "snap", t)
        if g is None:
            assert raw is None
            continue
        cap, inflight, nres, region, lat, lon, tps, status, rel, _rep, seen = orjson.loads(raw)
        assert seen == pytest.approx(g["last_seen"], rel=1e-12)
        assert (cap, inflight, region, status) == (g["capacity"], g["in_flight"], g["region"], g["status"])
        assert nres == int(r.hget(live.p + "d:" + t, "nres"))
        # (JSON numbers from Lua carry 14 significant digits)
        assert [tps, rel] == pytest.approx([g["tokens_per_s"], g["reliability"]], rel=1e-12)
        where = [g["location"]["lat"], g["location"]["lon"]] if g["location"] else [None, None]
        assert [lat, lon] == (pytest.approx(where, rel=1e-12) if g["location"] else where)
        for m in g["models"]:
            offer = orjson.loads(r.hget(live.p + "om:" + m["name"], t))
            assert (offer["ctx"], offer["sha256"], offer["tps"]) == (m["ctx"], m["sha256"], m["tokens_per_s"])
    catalogue = live.catalogue()
    cat = {c["model"]: [c["devices"], c["capacity"], c["free_capacity"], c["regions"]] for c in catalogue}
    assert cat == per_model
    for c in catalogue:
        e = extras[c["model"]]
        assert c["contexts"] == e["contexts"] and c["ctx"] == (max(e["contexts"]) if e["contexts"] else None)
        assert set(c["kinds"]) == e["kinds"]
        expected_tps = sum(e["tps"]) / len(e["tps"]) if e["tps"] else None
        assert c["tokens_per_s"] == (pytest.approx(expected_tps, abs=0.01) if e["tps"] else None)
        assert live.serves(c["model"])
    assert not live.serves("no-such-model")


def test_heartbeats_register_and_report_who_came_online(live):
    assert live.apply_heartbeats([beat("a"), beat("b"), beat("a", ts=NOW + 1)], now=NOW) == ["a", "b"]
    assert live.apply_heartbeats([beat("a", ts=NOW + 2)], now=NOW + 2) == []
    g = live.get("a", now=NOW + 2)
    assert g["online"] and g["capacity"] == 2 and g["region"] == "eu" and g["models"][0]["ctx"] == 4096
    assert g["location"] == {"lat": 50.0, "lon": 8.0}
    assert live.get("nope") is None
    assert live.count() == 2 and set(live.things()) == {"a", "b"}


def test_stale_heartbeat_is_ignored(live):
    live.apply_heartbeats([beat("a", ts=NOW + 10, cap=3)], now=NOW)
    live.apply_heartbeats([beat("a", ts=NOW + 5, cap=1)], now=NOW + 1)  # delivered out of order
    assert live.get("a", now=NOW + 1)["capacity"] == 3


def test_place_reserves_and_release_is_idempotent(live):
    live.apply_heartbeats([beat("a", cap=1)], now=NOW)
    s = sched(live)
    p = s.place(req("t1"))
    assert p.thing == "a" and p.model_hash == "sha-m1" and 0 < p.score <= 1
    assert (
        p.reason["winner"] == "a"
        and p.reason["candidates"] == 1
        and p.reason["considered"][0]["thing"] == "a"
    )
    assert live.get("a", now=NOW)["reservations"][0]["task_id"] == "t1"
    assert s.place(req("t2")) is None  # the only slot is taken
    assert live.catalogue()[0]["free_capacity"] == 0
    assert s.release("a", "t1") is True
    assert s.release("a", "t1") is False
    assert live.catalogue()[0]["free_capacity"] == 1
    assert s.place(req("t2")).thing == "a"


def test_repeated_place_for_a_task_returns_its_reservation(live):
    live.apply_heartbeats([beat("a", cap=5), beat("b", cap=5)], now=NOW)
    s = sched(live)
    first = s.place(req("t1"))
    again = s.place(req("t1"))
    assert again.thing == first.thing and "repeated" in again.reason["why"]
    assert sum(live.get(t, now=NOW)["reserved"] for t in "ab") == 1
    # Re-placing with the holder excluded moves the reservation instead of holding two.
    moved = s.place(req("t1", exclude=frozenset({first.thing})))
    assert moved.thing != first.thing
    assert live.get(first.thing, now=NOW)["reserved"] == 0 and live.get(moved.thing, now=NOW)["reserved"] == 1


def test_hard_constraints_region_ctx_hash_kind_exclusion_draining(live):
    live.apply_heartbeats(
        [
            beat("eu1", region="eu"),
            beat("us1", region="us", ctx=512),
            beat("drain", status="draining"),
            beat("other-hash", sha="sha-other"),
        ],
        now=NOW,
    )
    s = sched(live)
    assert s.place(req("t1", region="us")).thing == "us1"
    assert s.place(req("t2", region="ap")) is None
    for i in range(4):
        p = s.place(req(f"c{i}", min_ctx=1024))
        assert p.thing in {"eu1", "other-hash"}
    assert s.place(req("h", model_hash="sha-other")) is None  # other-hash is full from the ctx tasks
    (
        s.release("other-hash", "c0"),
        s.release("other-hash", "c1"),
        s.release("other-hash", "c2"),
        s.release("other-hash", "c3"),
    )
    assert s.place(req("h", model_hash="sha-other")).thing == "other-hash"
    assert s.place(req("e", kind="embedding")) is None
    out = s.place_explained(req("x", exclude=frozenset({"eu1", "us1", "other-hash"})))
    assert out.placement is None and "no device fits" in out.reason["why"]
    assert "drain" not in {c["thing"] for c in out.reason["considered"]}


def test_reported_in_flight_counts_and_release_frees_before_next_heartbeat(live):
    live.apply_heartbeats([beat("a", cap=2, in_flight=2)], now=NOW)
    s = sched(live)
    assert s.place(req("t1")) is None
    live.apply_heartbeats([beat("a", ts=NOW + 1, cap=2, in_flight=1)], now=NOW + 1)
    assert s.place(req("t1")).thing == "a"
    live.apply_heartbeats([beat("a", ts=NOW + 2, cap=2, in_flight=2)], now=NOW + 2)  # t1 runs + the old one
    assert s.place(req("t2")) is None
    s.release("a", "t1")  # t1 finished: counts no more than the reservations left (0)
    assert live.get("a", now=NOW)["free"] == 2
    assert s.place(req("t2")).thing == "a"


def test_heartbeat_ttl_expiry_and_deregistration(live, r):
    live.apply_heartbeats([beat(t) for t in "abc"], now=NOW)
    s = sched(live)
    s.place(req("t1"))
    live.apply_heartbeats([beat("a", ts=NOW + 20)], now=NOW + 20)
    assert sorted(live.expire(now=NOW + 31)) == ["b", "c"]
    assert live.expire(now=NOW + 31) == []  # idempotent
    assert live.get("b", now=NOW + 31) is None and live.count() == 1
    assert live.catalogue()[0]["devices"] == 1
    check_consistency(live, r, "abc")
    live.remove("a")
    assert live.catalogue() == [] and live.count() == 0
    assert sched(live).place(req("t9")) is None
    # A device that comes back is online again, with its reliability record kept.
    live.record_outcome("a", False, now=NOW)
    assert live.apply_heartbeats([beat("a", ts=NOW + 40)], now=NOW + 40) == ["a"]
    assert live.get("a", now=NOW + 40)["reliability"] < 0.8


def test_a_silent_device_is_not_placed_on_even_before_the_sweep(live):
    live.apply_heartbeats([beat("old")], now=NOW - 60)
    assert sched(live).place(req("t1")) is None


def test_reservations_expire_after_hold_and_are_swept(live):
    live.apply_heartbeats([beat("a", cap=1)], now=NOW)
    s = sched(live)
    assert s.place(req("t1", hold_s=5)).thing == "a"
    assert live.expire(now=NOW + 4) == []
    assert live.get("a", now=NOW + 4)["free"] == 0
    live.expire(now=NOW + 6)  # nobody touched the device: the sweep frees the slot
    assert live.catalogue()[0]["free_capacity"] == 1
    assert live.get("a", now=NOW + 6)["reservations"] == []
    assert s.release("a", "t1") is False


def test_structural_changes_move_the_device_between_indexes(live, r):
    live.apply_heartbeats([beat("a", models=("m1", "m2"), region="eu")], now=NOW)
    live.apply_heartbeats([beat("a", ts=NOW + 1, models=("m2",), region="us", cap=3)], now=NOW + 1)
    assert {c["model"]: c["regions"] for c in live.catalogue()} == {"m2": {"us": 1}}
    assert sched(live).place(req("t", model="m1")) is None
    assert sched(live).place(req("t", model="m2", region="us")).thing == "a"
    live.apply_heartbeats(
        [beat("a", ts=NOW + 2, models=("m2",), region="us", status="draining")], now=NOW + 2
    )
    assert sched(live).place(req("t2", model="m2")) is None
    check_consistency(live, r, "a")


def test_reliability_decays_and_reorders_the_index(live, r):
    live.apply_heartbeats([beat("a", tps=30.0, model_tps=25.0), beat("b", tps=30.0)], now=NOW)
    for _ in range(5):
        live.record_outcome("a", False, now=NOW)
    rate = live.get("a", now=NOW)["reliability"]
    assert rate == pytest.approx((0 + 4) / (5 + 5)) == pytest.approx(live.reliability("a"))
    # The Lua-side static quality is the core's formula (model tokens/s wins over the device's).
    assert float(r.zscore(live.p + "f:m1", "a")) == pytest.approx(
        index_quality(25.0, rate, Weights().reference_tps)
    )
    assert float(r.zscore(live.p + "f:m1", "b")) == pytest.approx(
        index_quality(30.0, 0.8, Weights().reference_tps)
    )
    # Half-lives later the failures have faded back towards the prior.
    later = live.record_outcome("a", True, now=NOW + 10 * 3600)
    assert later > 0.8


def test_thousands_of_devices_constraints_and_proximity(live, r):
    fleet = synthetic_fleet(3000)
    assert len(live.apply_heartbeats(fleet, now=NOW)) == 3000
    by_thing = {b.thing: b for b in fleet}
    s = sched(live, proximity=1.0, capability=0.0, load=0.0, reliability=0.0, temperature=0.0)
    rng = random.Random(5)
    reserved = {b.thing: 0 for b in fleet}
    exact = 0
    extra_km: list[float] = []
    for i in range(200):
        region = rng.choice([None, "eu", "us", "ap"])
        if i % 4:  # most clients live where devices do; a quarter anywhere on the planet
            city = by_thing[f"dev-{rng.randrange(3000):05d}"].location
            near = (city.lat + rng.gauss(0, 1), city.lon + rng.gauss(0, 1))
        else:
            near = (rng.uniform(-50, 60), rng.uniform(-170, 170))
        min_ctx = rng.choice([None, 4096])
        p = s.place(req(f"t{i}", region=region, near=near, min_ctx=min_ctx, hold_s=60))
        b = by_thing[p.thing]
        reserved[p.thing] += 1
        assert region is None or b.region == region
        assert min_ctx is None or b.models[0].ctx >= min_ctx
        # Pure proximity: the winner is the nearest matching device that still has a free slot, or
        # one from the same grid block around the client: within ~80 km when the finest level (0.25
        # degree cells) had enough devices; otherwise the finer block, read whole, held no matching
        # device, so the nearest one is at least a finer cell away (the ratio bound below).
        best = min(
            haversine_km(near, (x.location.lat, x.location.lon))
            for x in fleet
            if (region is None or x.region == region)
            and (min_ctx is None or x.models[0].ctx >= min_ctx)
            and x.load.capacity - reserved[x.thing] + (x.thing == p.thing) > 0
        )
        got = haversine_km(near, (b.location.lat, b.location.lon))
        if min_ctx is None:  # (a post-filter can reject every grid candidate: no bound then)
            assert best - 1e-6 <= got
            assert got <= 80 or got <= 12 * best / max(math.cos(math.radians(near[0])), 0.2), (got, best)
            exact += got <= best + 1e-6
            extra_km.append(got - best)
        # Bounded by configuration, never by the fleet: top + random + near per grid level (+1 overshoot).
        assert p.reason["candidates"] <= 8 + 4 + (len(GRID_DEGREES) + 1) * 8
    print(
        "exact nearest:",
        exact,
        "of",
        len(extra_km),
        "extra km p50/p90/max:",
        sorted(extra_km)[len(extra_km) // 2],
        sorted(extra_km)[int(len(extra_km) * 0.9)],
        max(extra_km),
    )
    assert exact >= 0.7 * len(extra_km)  # most get the very nearest device (88 of 107 when written)


def test_rare_model_fills_exactly_to_capacity_then_frees(live, r):
    fleet = synthetic_fleet(3000)
    live.apply_heartbeats(fleet, now=NOW)
    rare = [b for b in fleet if "rare" in [m.name for m in b.models]]
    slots = sum(b.load.capacity for b in rare)
    s = sched(live, seed=3)
    placed = []
    while (p := s.place(req(f"r{len(placed)}", model="rare"))) is not None:
        placed.append(p)
        assert len(placed) <= slots
    assert len(placed) == slots
    for b in rare:
        assert live.get(b.thing, now=NOW)["reserved"] == b.load.capacity
    cat = {c["model"]: c for c in live.catalogue()}
    assert cat["rare"]["free_capacity"] == 0 and cat["rare"]["devices"] == len(rare)
    check_consistency(live, r, [b.thing for b in fleet])
    for i, p in enumerate(placed):
        assert s.release(p.thing, f"r{i}")
    assert {c["model"]: c for c in live.catalogue()}["rare"]["free_capacity"] == slots


def test_exclusions_beyond_the_first_page_fetch_more(live):
    live.apply_heartbeats([beat(f"d{i:02d}", tps=10.0 + i) for i in range(30)], now=NOW)
    w = dict(index_candidates=4, random_candidates=0, near_candidates=0)
    best = [f"d{i:02d}" for i in range(29, 17, -1)]  # the 12 best by static quality
    p = sched(live, **w).place(req("t", exclude=frozenset(best)))
    assert p is not None and p.thing not in best


def test_random_operations_keep_counters_and_indexes_consistent(live, r):
    rng = random.Random(11)
    things = [f"d{i}" for i in range(40)]
    s = sched(live, seed=2)
    held: dict[str, str] = {}
    now = NOW
    for step in range(600):
        now += rng.uniform(0, 1.5)
        op = rng.random()
        if op < 0.35:
            t = rng.choice(things)
            live.apply_heartbeats(
                [
                    beat(
                        t,
                        ts=now,
                        cap=rng.randint(0, 3),
                        in_flight=rng.randint(0, 2),
                        region=rng.choice(["eu", "us"]),
                        models=rng.choice([("m1",), ("m1", "m2"), ("m2",)]),
                        status=rng.choice(["online"] * 5 + ["draining"]),
                    )
                ],
                now=now,
            )
        elif op < 0.7:
            s.clock = lambda now=now: now
            p = s.place(req(f"t{step}", model=rng.choice(["m1", "m2"]), hold_s=rng.uniform(1, 20)))
            if p:
                held[f"t{step}"] = p.thing
        elif op < 0.9 and held:
            task = rng.choice(sorted(held))
            live.release(held.pop(task), task, now=now)
        elif op < 0.95:
            live.expire(now=now)
        else:
            live.record_outcome(rng.choice(things), rng.random() < 0.7, now=now)
    live.expire(now=now)
    check_consistency(live, r, things, now=now)


def test_keys_all_share_one_cluster_slot(live, r, redis_prefix):
    live.apply_heartbeats(synthetic_fleet(50), now=NOW)
    sched(live).place(req("t1", near=(10.0, 10.0)))
    keys = [k.decode() for k in r.scan_iter(match=redis_prefix + "*", count=1000)]
    assert keys and all("{live}" in k for k in keys)
    assert math.isfinite(live.record_outcome("dev-00001", True))


def test_invalid_names_never_reach_the_indexes(live, r, redis_prefix):
    assert live.apply_heartbeats([beat("bad\tname"), beat("bad/topic"), beat("ok")], now=NOW) == ["ok"]
    assert live.count() == 1
    with pytest.raises(ValueError, match="task id"):
        sched(live).place(req("bad\ttask"))
    with pytest.raises(ValueError, match="hold_s"):
        sched(live).place(req("t", hold_s=0))


def test_index_quality_uses_the_configured_reference(r, redis_prefix):
    live = LiveState(r, prefix=redis_prefix, reference_tps=50.0)
    live.apply_heartbeats([beat("a", tps=50.0)], now=NOW)
    assert (
        float(r.zscore(live.p + "f:m1", "a"))
        == pytest.approx(index_quality(50.0, 0.8, 50.0))
        == pytest.approx(0.4)
    )


def test_works_with_a_decoding_client(redis_url, redis_prefix):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    live = LiveState(client, prefix=redis_prefix)
    assert live.apply_heartbeats([beat("a", cap=1)], now=NOW) == ["a"]
    s = sched(live)
    p = s.place(req("t1"))
    assert p.thing == "a" and p.model_hash == "sha-m1"
    assert live.get("a", now=NOW)["reservations"][0]["task_id"] == "t1"
    assert live.catalogue()[0]["free_capacity"] == 0 and live.things() == ["a"]
    assert s.release("a", "t1") and live.expire(now=NOW + 60) == ["a"]


def test_reputation_hook_reaches_the_decision(live):
    live.apply_heartbeats([beat("good"), beat("bad")], now=NOW)
    live.set_reputation("good", 1.0)
    live.set_reputation("bad", 0.0)
    s = sched(live, reputation=5.0, temperature=0.0)
    p = s.place(req("t1"))
    assert p.thing == "good" and p.reason["considered"][0]["parts"]["reputation"] == 1.0
    assert live.get("bad", now=NOW)["reputation"] == 0.0
    # It outlives the live state: a device that comes back keeps it.
    live.remove("bad")
    live.apply_heartbeats([beat("bad", ts=NOW + 1)], now=NOW + 1)
    assert live.get("bad", now=NOW + 1)["reputation"] == 0.0
    live.set_reputation("bad", None)
    assert live.get("bad", now=NOW + 1)["reputation"] is None
    with pytest.raises(ValueError):
        live.set_reputation("good", 1.5)
