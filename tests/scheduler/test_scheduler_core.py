"""Property tests for the pure scheduling core (no I/O)."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from ig3.scheduler.core import (
    Candidate,
    ModelOffer,
    PlacementRequest,
    Weights,
    capability_part,
    decide,
    explain,
    haversine_km,
    index_quality,
    rejection,
    reliability_rate,
    score,
)

THINGS = [f"dev-{i}" for i in range(12)]
MODELS = ["m1", "m2", "m3"]
REGIONS = ["eu", "us", "ap"]

lat_st = st.floats(min_value=-90, max_value=90, allow_nan=False)
lon_st = st.floats(min_value=-180, max_value=180, allow_nan=False)
point_st = st.tuples(lat_st, lon_st)

offer_st = st.builds(
    ModelOffer,
    name=st.just("x"),
    ctx=st.one_of(st.none(), st.sampled_from([512, 2048, 8192])),
    quant=st.one_of(st.none(), st.sampled_from(["Q4_1", "Q8_0"])),
    sha256=st.one_of(st.none(), st.sampled_from(["h1", "h2"])),
    kinds=st.sampled_from([("chat", "completion"), ("embedding",), ("chat",)]),
    tokens_per_s=st.one_of(st.none(), st.floats(min_value=0.1, max_value=500)),
)


@st.composite
def candidate_st(draw):
    models = draw(st.dictionaries(st.sampled_from(MODELS), offer_st, max_size=3))
    models = {k: ModelOffer(k, v.ctx, v.quant, v.sha256, v.kinds, v.tokens_per_s) for k, v in models.items()}
    located = draw(st.booleans())
    return Candidate(
        thing=draw(st.sampled_from(THINGS)),
        capacity=draw(st.integers(0, 4)),
        in_flight=draw(st.integers(0, 5)),
        reserved=draw(st.integers(0, 5)),
        region=draw(st.one_of(st.none(), st.sampled_from(REGIONS))),
        lat=draw(lat_st) if located else None,
        lon=draw(lon_st) if located else None,
        tokens_per_s=draw(st.one_of(st.none(), st.floats(min_value=0.1, max_value=500))),
        reliability=draw(st.floats(min_value=0, max_value=1)),
        reputation=draw(st.one_of(st.none(), st.floats(min_value=0, max_value=1))),
        online=draw(st.booleans()),
        draining=draw(st.booleans()),
        models=models,
    )


request_st = st.builds(
    PlacementRequest,
    task_id=st.just("task-1"),
    model=st.sampled_from(MODELS),
    kind=st.sampled_from(["chat", "completion", "embedding"]),
    region=st.one_of(st.none(), st.sampled_from(REGIONS)),
    near=st.one_of(st.none(), point_st),
    exclude=st.frozensets(st.sampled_from(THINGS), max_size=4),
    min_ctx=st.one_of(st.none(), st.sampled_from([256, 1024, 4096])),
    model_hash=st.one_of(st.none(), st.sampled_from(["h1", "h2"])),
    quant=st.one_of(st.none(), st.sampled_from(["Q4_1", "Q8_0"])),
)

weight_st = st.floats(min_value=0, max_value=5)


@st.composite
def valid_weights(draw):
    parts = [draw(weight_st) for _ in range(5)]
    assume(sum(parts) > 0)
    return Weights(
        *parts, top_k=draw(st.integers(1, 6)), temperature=draw(st.floats(min_value=0, max_value=2))
    )


def first_occurrences(cands):
    seen, out = set(), []
    for c in cands:
        if c.thing not in seen:
            seen.add(c.thing)
            out.append(c)
    return out


@settings(max_examples=250, deadline=None)
@given(st.lists(candidate_st(), max_size=15), request_st, valid_weights(), st.integers(0, 2**32))
def test_decision_respects_every_hard_constraint(cands, req, w, seed):
    d = decide(cands, req, w, random.Random(seed))
    unique = {c.thing: c for c in first_occurrences(cands)}
    eligible = {t for t, c in unique.items() if rejection(c, req) is None}
    assert {s.thing for s in d.considered} == eligible
    assert sorted(s.thing for s in d.order) == sorted(eligible)  # the order is a permutation
    assert d.candidates == len(unique)
    assert sum(d.rejected.values()) == len(unique) - len(eligible)
    if not eligible:
        assert d.winner is None
        return
    win = unique[d.winner.thing]
    assert win.thing not in req.exclude
    assert win.online and not win.draining and win.free > 0
    offer = win.models[req.model]
    assert req.kind in offer.kinds
    if req.region is not None:
        assert win.region == req.region
    if req.min_ctx is not None:
        assert offer.ctx is not None and offer.ctx >= req.min_ctx
    if req.model_hash is not None:
        assert offer.sha256 == req.model_hash
    if req.quant is not None:
        assert offer.quant == req.quant
    assert d.winner.model_hash == offer.sha256


def _servable(c: Candidate) -> Candidate:
    """The same device, made able to take a plain chat task for m1 (so most examples are eligible)."""
    offer = c.models.get("m1") or ModelOffer("m1")
    return replace(
        c,
        online=True,
        draining=False,
        capacity=max(c.capacity, 1),
        in_flight=0,
        reserved=min(c.reserved, max(c.capacity, 1) - 1),
        models={"m1": ModelOffer("m1", offer.ctx, offer.quant, offer.sha256, ("chat",), offer.tokens_per_s)},
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(candidate_st().map(_servable), min_size=1, max_size=15),
    st.one_of(st.none(), point_st),
    st.frozensets(st.sampled_from(THINGS), max_size=3),
    valid_weights(),
    st.integers(0, 2**32),
)
def test_winner_is_among_the_top_k_and_rest_follow_by_score(cands, near, exclude, w, seed):
    req = PlacementRequest(task_id="t", model="m1", near=near, exclude=exclude)
    d = decide(cands, req, w, random.Random(seed))
    assume(d.winner is not None)
    scores = [s.score for s in d.considered]
    assert scores == sorted(scores, reverse=True)
    assert d.winner in d.considered[: w.top_k]
    rest = [s.score for s in d.order[1:]]
    assert rest == sorted(rest, reverse=True)
    for s in d.considered:
        assert 0.0 <= s.score <= 1.0 + 1e-12
        assert all(0.0 <= v <= 1.0 for v in s.parts.values())
    if w.temperature == 0:
        assert d.winner == d.considered[0]
    # The same seed gives the same decision (reproducible decisions in tests and replays).
    assert decide(cands, req, w, random.Random(seed)).order == d.order


@settings(max_examples=200, deadline=None)
@given(candidate_st(), request_st, st.integers(1, 3))
def test_more_free_slots_never_lower_the_score(c, req, extra):
    w = Weights()
    assume(c.capacity > 0)
    busier = replace(c, reserved=c.busy + extra)
    assert score(busier, req, w).score <= score(c, req, w).score + 1e-12


@settings(max_examples=200, deadline=None)
@given(point_st, point_st, point_st)
def test_closer_devices_score_higher_on_proximity(client, a, b):
    w = Weights()
    req = PlacementRequest(task_id="t", model="m1", near=client)
    offers = {"m1": ModelOffer("m1")}
    ca = Candidate("a", 1, lat=a[0], lon=a[1], models=offers)
    cb = Candidate("b", 1, lat=b[0], lon=b[1], models=offers)
    da, db = haversine_km(client, a), haversine_km(client, b)
    pa, pb = score(ca, req, w).parts["proximity"], score(cb, req, w).parts["proximity"]
    if da < db - 1e-6:
        assert pa >= pb
    assert score(ca, req, w).score - score(cb, req, w).score == pytest.approx(
        w.proximity * (pa - pb) / (w.proximity + w.capability + w.load + w.reliability), abs=1e-9
    )


@given(point_st, point_st, point_st)
def test_haversine_is_a_metric(a, b, c):
    assert haversine_km(a, a) == pytest.approx(0.0, abs=1e-6)
    assert haversine_km(a, b) == pytest.approx(haversine_km(b, a), abs=1e-6)
    assert haversine_km(a, b) <= math.pi * 6371.0088 + 1e-6
    assert haversine_km(a, c) <= haversine_km(a, b) + haversine_km(b, c) + 1e-6


def test_haversine_known_distance():
    # Berlin - Paris: ~878 km.
    assert haversine_km((52.5200, 13.4050), (48.8566, 2.3522)) == pytest.approx(878, rel=0.01)


@given(st.floats(min_value=0.01, max_value=1e4), st.floats(min_value=0.01, max_value=1e4))
def test_capability_is_monotonic_and_saturating(a, b):
    lo, hi = sorted((a, b))
    assert capability_part(lo, 20) <= capability_part(hi, 20) < 1.0
    assert capability_part(None, 20) == 0.5 == capability_part(20, 20)
    assert index_quality(hi, 0.5, 20) == pytest.approx(capability_part(hi, 20) * 0.5)


def test_reliability_prior_and_direction():
    assert reliability_rate(0, 0) == pytest.approx(0.8)
    assert reliability_rate(10, 10) > reliability_rate(0, 0) > reliability_rate(0, 10)


def _fleet(n, tps=lambda i: 20.0):
    return [Candidate(f"d{i}", 4, tokens_per_s=tps(i), models={"m": ModelOffer("m")}) for i in range(n)]


def test_draw_spreads_work_over_near_equal_devices():
    # Herding check: equally good devices share the work instead of one taking every task.
    w = Weights(top_k=3)
    req = PlacementRequest(task_id="t", model="m")
    rng = random.Random(7)
    wins = Counter(decide(_fleet(10), req, w, rng).winner.thing for _ in range(3000))
    assert len(wins) == 3
    assert min(wins.values()) > 800


def test_draw_favours_the_clearly_best_device():
    w = Weights(top_k=3, temperature=0.05)
    req = PlacementRequest(task_id="t", model="m")
    fleet = _fleet(5, tps=lambda i: 400.0 if i == 0 else 2.0)  # d0 is 0.25+ better on capability
    rng = random.Random(3)
    wins = Counter(decide(fleet, req, w, rng).winner.thing for _ in range(2000))
    assert wins["d0"] > 1900


def test_reputation_hook_only_counts_when_weighted():
    req = PlacementRequest(task_id="t", model="m")
    good = Candidate("good", 1, reputation=1.0, models={"m": ModelOffer("m")})
    bad = Candidate("bad", 1, reputation=0.0, models={"m": ModelOffer("m")})
    assert score(good, req, Weights()).score == score(bad, req, Weights()).score
    weighted = Weights(reputation=1.0)
    assert score(good, req, weighted).score > score(bad, req, weighted).score


def test_explain_records_candidates_scores_and_winner():
    req = PlacementRequest(task_id="t", model="m", exclude=frozenset({"d1"}))
    d = decide(_fleet(4), req, Weights(temperature=0), random.Random(0))
    reason = explain(d, req, Weights(), d.winner.thing, ["d9"])
    assert reason["candidates"] == 4 and reason["winner"] == d.winner.thing
    assert reason["rejected"] == {"excluded": 1}
    assert [c["thing"] for c in reason["considered"]] == [s.thing for s in d.considered]
    assert set(reason["considered"][0]["parts"]) == {"capability", "load", "reliability"}
    assert "d9" in reason["why"] and "excluded=1" in reason["why"]
    none = explain(decide([], req, Weights(), random.Random(0)), req, Weights(), None)
    assert none["winner"] is None and "no device fits" in none["why"]


def test_weights_from_env_and_validation():
    w = Weights.from_env({"IG3_SCHED_PROXIMITY": "0.9", "IG3_SCHED_TOP_K": "5", "IG3_SCHED_LOAD": ""})
    assert w.proximity == 0.9 and w.top_k == 5 and w.load == Weights().load
    with pytest.raises(ValueError, match="IG3_SCHED_TOP_K"):
        Weights.from_env({"IG3_SCHED_TOP_K": "three"})
    with pytest.raises(ValueError):
        Weights(load=-1)
    with pytest.raises(ValueError):
        Weights(top_k=0)
    with pytest.raises(ValueError):
        Weights(proximity=0, capability=0, load=0, reliability=0, reputation=0)
