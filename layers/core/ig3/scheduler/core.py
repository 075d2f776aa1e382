"""Pure scheduling core: filter, score and choose among candidate devices. No I/O.

The Redis adapter (``ig3.scheduler.live``) fetches a *bounded* set of candidates (see its
docstring for the per-decision cost) and this module decides among them. Keeping the decision
pure means it is property-tested with hypothesis and reused unchanged by any other store.

Decisions:
- **Filter** (hard constraints): online, not draining, serves the model for the task's kind,
  context length ≥ ``min_ctx``, matching quantization / model file hash when asked, in the
  requested region, has a free slot (capacity minus ``max(reported in-flight, reserved)``),
  not excluded (devices that already failed this task).
- **Score** (soft preferences), each part normalised to [0, 1] so weights mean what they say:
  proximity ``1 / (1 + d / proximity_km)`` (haversine distance to the client), capability
  ``tps / (tps + reference_tps)`` (saturating: a device twice as fast is not twice as good
  for a single request), load = free fraction of the device's slots, reliability = decayed
  success rate, reputation (issue #13's hook; weight 0 until it exists). The total is the
  weighted mean of the parts that apply to the request (proximity only when ``near`` is given),
  so scores stay in [0, 1] whatever the weights.
- **Choose** with randomness among the best: a softmax draw (``temperature``) over the top-K
  by score. Pure argmax makes every dispatcher pile onto the same device between heartbeats
  (herding); a uniform draw ignores quality. iG3's published machine-selection formula also
  draws among the best, but over capability alone — ours folds in load and model
  availability. The returned order is the winner first, then the rest by score: the adapter
  tries them in that order when reserving, so a winner that filled up meanwhile costs no
  extra round trip.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

EARTH_RADIUS_KM = 6371.0088
_RAD = math.pi / 180
# Parts scored for every request (proximity is added when the request says where the client is).
PART_NAMES = ("proximity", "capability", "load", "reliability", "reputation")
# What a device with no track record is assumed to be: a Beta(4, 1) prior, i.e. mean 0.8,
# worth five observations — new devices get work, and a few failures sink them quickly.
RELIABILITY_PRIOR_SUCCESSES = 4.0
RELIABILITY_PRIOR_FAILURES = 1.0


@dataclass(frozen=True)
class Weights:
    """Scheduler configuration (env ``IG3_SCHED_<FIELD>``, e.g. ``IG3_SCHED_PROXIMITY=0.5``)."""

    proximity: float = 0.35
    capability: float = 0.20
    load: float = 0.30
    reliability: float = 0.15
    reputation: float = 0.0  # issue #13 (verifiable-work reputation); off until it exists
    top_k: int = 3  # the draw is among this many best-scored devices
    temperature: float = 0.05  # softmax temperature over scores in [0,1]; 0 = always the best
    proximity_km: float = 1000.0  # distance at which the proximity part is 0.5
    reference_tps: float = 20.0  # tokens/s at which the capability part is 0.5
    # Candidate fetch (bounds the per-decision cost; see ig3.scheduler.live):
    index_candidates: int = 8  # best by static quality from the free-capacity index
    random_candidates: int = 4  # uniform sample of the free index (power-of-d choices)
    near_candidates: int = 8  # nearest from the GEO index, when the request gives `near`
    max_pages: int = 3  # further index pages fetched only while filters reject everything
    # How long a dispatcher decides on its copy of each index head (ig3.scheduler.view); 0 = never.
    index_view_ms: float = 250.0

    def __post_init__(self) -> None:
        for name in ("proximity", "capability", "load", "reliability", "reputation", "temperature"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"scheduler weight {name} must be a finite number >= 0, got {value!r}")
        if self.capability + self.load + self.reliability + self.reputation + self.proximity <= 0:
            raise ValueError("at least one scheduler weight must be positive")
        for name in ("proximity_km", "reference_tps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"scheduler {name} must be > 0")
        if self.top_k < 1 or self.index_candidates < 1:
            raise ValueError("scheduler top_k and index_candidates must be >= 1")
        if not (self.index_view_ms >= 0 and math.isfinite(self.index_view_ms)):
            raise ValueError("scheduler index_view_ms must be a finite number >= 0")
        if self.random_candidates < 0 or self.near_candidates < 0 or self.max_pages < 0:
            raise ValueError("scheduler candidate counts must be >= 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Weights:
        """Read ``IG3_SCHED_*`` overrides; unknown or malformed values raise ``ValueError``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"IG3_SCHED_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = int(raw) if f.type in ("int", int) else float(raw)
            except ValueError as exc:
                raise ValueError(f"IG3_SCHED_{f.name.upper()}={raw!r} is not a number") from exc
        return cls(**values)


@dataclass(frozen=True)
class PlacementRequest:
    task_id: str
    model: str
    kind: str = "chat"
    region: str | None = None  # hard constraint if set
    near: tuple[float, float] | None = None  # (lat, lon) of the client, for proximity
    exclude: frozenset[str] = frozenset()  # devices that already failed this task
    min_ctx: int | None = None
    model_hash: str | None = None
    hold_s: float = 120.0  # reserved slot lifetime if never released (crash safety)
    quant: str | None = None  # exact quantization, e.g. "Q4_1", when the caller needs one


@dataclass(frozen=True)
class Placement:
    thing: str
    model_hash: str | None
    score: float
    reason: dict  # {"candidates", "considered": [{"thing","score","parts"}], "winner", "why", ...}


@dataclass(frozen=True)
class ModelOffer:
    """One model as a device serves it (from its heartbeat)."""

    name: str
    ctx: int | None = None
    quant: str | None = None
    sha256: str | None = None
    kinds: tuple[str, ...] = ("chat", "completion")
    tokens_per_s: float | None = None


@dataclass(slots=True)  # not frozen: built per candidate per decision, and frozen init is slow
class Candidate:
    """A device as the scheduler sees it at decision time."""

    thing: str
    capacity: int
    in_flight: int = 0  # reported by its last heartbeat
    reserved: int = 0  # live reservations held by dispatchers
    region: str | None = None
    lat: float | None = None
    lon: float | None = None
    tokens_per_s: float | None = None  # device-wide EWMA; a model's own figure wins
    reliability: float = RELIABILITY_PRIOR_SUCCESSES / (
        RELIABILITY_PRIOR_SUCCESSES + RELIABILITY_PRIOR_FAILURES
    )
    reputation: float | None = None
    online: bool = True
    draining: bool = False
    models: Mapping[str, ModelOffer] = field(default_factory=dict)

    @property
    def busy(self) -> int:
        # The heartbeat's in-flight count lags reservations and reservations miss orphaned work:
        # the larger of the two is the safe view.
        return max(self.in_flight, self.reserved)

    @property
    def free(self) -> int:
        return max(self.capacity - self.busy, 0)


@dataclass(slots=True)
class Scored:
    thing: str
    score: float
    parts: dict[str, float]
    model_hash: str | None = None  # the model file the device serves under the requested name

    def as_dict(self) -> dict[str, Any]:
        return {
            "thing": self.thing,
            "score": round(self.score, 4),
            "parts": {k: round(v, 4) for k, v in self.parts.items()},
        }


@dataclass(frozen=True)
class Decision:
    order: tuple[Scored, ...]  # reservation order: the drawn winner first, then by score
    considered: tuple[Scored, ...]  # every eligible candidate, best score first
    rejected: dict[str, int]  # rejection reason -> count
    candidates: int  # distinct candidates looked at

    @property
    def winner(self) -> Scored | None:
        return self.order[0] if self.order else None


def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (lat, lon) points in km."""
    lat1, lon1 = math.radians(a[0]), math.radians(a[1])
    lat2, lon2 = math.radians(b[0]), math.radians(b[1])
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def capability_part(tokens_per_s: float | None, reference_tps: float) -> float:
    # Unknown speed (a device that has not run a task yet) is scored as the reference: neutral.
    if tokens_per_s is None or tokens_per_s <= 0:
        return 0.5
    return tokens_per_s / (tokens_per_s + reference_tps)


def index_quality(tokens_per_s: float | None, reliability: float, reference_tps: float) -> float:
    """The weight-free static score devices are ordered by in the free-capacity index.

    The Lua scripts compute the same formula (a test holds them to it). It only decides which
    devices are *fetched* as candidates; the full score above decides among them.
    """
    return capability_part(tokens_per_s, reference_tps) * reliability


def reliability_rate(successes: float, observations: float) -> float:
    """Decayed success rate with the Beta prior (successes/observations are decayed counts)."""
    return (successes + RELIABILITY_PRIOR_SUCCESSES) / (
        observations + RELIABILITY_PRIOR_SUCCESSES + RELIABILITY_PRIOR_FAILURES
    )


def rejection(c: Candidate, req: PlacementRequest) -> str | None:
    """Why ``c`` cannot take ``req`` (``None``: it can)."""
    if c.thing in req.exclude:
        return "excluded"
    if not c.online:
        return "offline"
    if c.draining:
        return "draining"
    offer = c.models.get(req.model)
    if offer is None:
        return "no_model"
    if req.kind not in offer.kinds:
        return "kind"
    if req.min_ctx is not None and (offer.ctx is None or offer.ctx < req.min_ctx):
        return "ctx"
    if req.quant is not None and offer.quant != req.quant:
        return "quant"
    if req.model_hash is not None and offer.sha256 != req.model_hash:
        return "model_hash"
    if req.region is not None and c.region != req.region:
        return "region"
    if c.capacity <= (c.in_flight if c.in_flight > c.reserved else c.reserved):
        return "full"
    return None


class _Scorer:
    """``score`` with the request's constants hoisted out of the per-candidate loop."""

    __slots__ = (
        "model",
        "ref",
        "w_cap",
        "w_load",
        "w_rel",
        "w_prox",
        "w_rep",
        "total_w",
        "near",
        "lat1",
        "lon1",
        "cos1",
        "km",
    )

    def __init__(self, req: PlacementRequest, w: Weights):
        self.model = req.model
        self.ref = w.reference_tps
        self.w_cap, self.w_load, self.w_rel = w.capability, w.load, w.reliability
        self.near = req.near is not None
        self.w_prox = w.proximity if self.near else 0.0
        self.w_rep = w.reputation if w.reputation > 0 else 0.0
        self.total_w = self.w_cap + self.w_load + self.w_rel + self.w_prox + self.w_rep
        if req.near is not None:
            self.lat1, self.lon1 = math.radians(req.near[0]), math.radians(req.near[1])
            self.cos1 = math.cos(self.lat1)
        self.km = w.proximity_km

    def __call__(self, c: Candidate) -> Scored:
        offer = c.models.get(self.model)
        tps = offer.tokens_per_s if offer is not None and offer.tokens_per_s else c.tokens_per_s
        capability = 0.5 if tps is None or tps <= 0 else tps / (tps + self.ref)
        busy = c.in_flight if c.in_flight > c.reserved else c.reserved
        load = (c.capacity - busy) / c.capacity if c.capacity > busy else 0.0
        reliability = c.reliability
        reliability = 0.0 if reliability < 0.0 else 1.0 if reliability > 1.0 else reliability
        parts = {"capability": capability, "load": load, "reliability": reliability}
        total = self.w_cap * capability + self.w_load * load + self.w_rel * reliability
        if self.near:
            if c.lat is None or c.lon is None:
                proximity = 0.0  # unknown location: assume far rather than near
            else:  # haversine, the client's side precomputed
                lat2 = c.lat * _RAD
                a = math.sin((lat2 - self.lat1) * 0.5)
                b = math.sin((c.lon * _RAD - self.lon1) * 0.5)
                h = a * a + self.cos1 * math.cos(lat2) * b * b
                km = 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h) if h < 1.0 else 1.0)
                proximity = 1.0 / (1.0 + km / self.km)
            parts["proximity"] = proximity
            total += self.w_prox * proximity
        if self.w_rep:
            # Neutral for devices without a reputation yet, so the part never excludes anyone.
            reputation = 0.5 if c.reputation is None else min(max(c.reputation, 0.0), 1.0)
            parts["reputation"] = reputation
            total += self.w_rep * reputation
        # A weighted mean of parts in [0, 1] (zero total weight, e.g. only proximity weighted and
        # no `near`: every device ties at 0).
        mean = (total / self.total_w if total < self.total_w else 1.0) if self.total_w > 0 else 0.0
        return Scored(c.thing, mean, parts, offer.sha256 if offer is not None else None)


def score(c: Candidate, req: PlacementRequest, w: Weights) -> Scored:
    """Weighted mean of the parts that apply; every part in [0, 1], so the score is too."""
    return _Scorer(req, w)(c)


def draw(ranked: list[Scored], w: Weights, rng: random.Random) -> int:
    """Index (into ``ranked``, best first) of the device drawn among the top-K."""
    top = ranked[: w.top_k]
    if len(top) == 1 or w.temperature == 0:
        return 0
    best = top[0].score
    weights = [math.exp((s.score - best) / w.temperature) for s in top]
    return rng.choices(range(len(top)), weights=weights, k=1)[0]


def decide(
    candidates: Iterable[Candidate], req: PlacementRequest, w: Weights, rng: random.Random
) -> Decision:
    """Filter, score and draw. Duplicated candidates (several fetch sources) count once."""
    scorer = _Scorer(req, w)
    seen: set[str] = set()
    eligible: list[Scored] = []
    rejected: dict[str, int] = {}
    for c in candidates:
        if c.thing in seen:
            continue
        seen.add(c.thing)
        why = rejection(c, req)
        if why is not None:
            rejected[why] = rejected.get(why, 0) + 1
            continue
        eligible.append(scorer(c))
    # Ties broken by thing name so the ranking (and a seeded draw) is reproducible.
    eligible.sort(key=lambda s: (-s.score, s.thing))
    if not eligible:
        return Decision((), (), rejected, len(seen))
    chosen = draw(eligible, w, rng)
    order = (eligible[chosen], *eligible[:chosen], *eligible[chosen + 1 :])
    return Decision(order, tuple(eligible), rejected, len(seen))


def explain(
    decision: Decision,
    req: PlacementRequest,
    w: Weights,
    reserved: str | None,
    skipped: Iterable[str] = (),
    limit: int = 5,
) -> dict[str, Any]:
    """The decision record for response headers and the dashboard."""
    skipped = list(skipped)
    considered = [s.as_dict() for s in decision.considered[:limit]]
    rejected = ", ".join(f"{k}={v}" for k, v in sorted(decision.rejected.items()))
    if reserved is None:
        why = (
            f"no device fits model {req.model!r}: {decision.candidates} candidates, "
            f"{len(decision.considered)} eligible"
            + (f", rejected {rejected}" if rejected else "")
            + (f"; full when reserving: {', '.join(skipped)}" if skipped else "")
        )
    else:
        top = decision.considered[: w.top_k]
        rank = next((i for i, s in enumerate(decision.considered) if s.thing == reserved), None)
        why = (
            f"{reserved} (rank {rank + 1 if rank is not None else '?'} of {len(decision.considered)} "
            f"eligible, "
            f"drawn among top {len(top)} by score)"
        )
        if skipped:
            why += f"; filled up meanwhile: {', '.join(skipped)}"
        if rejected:
            why += f"; rejected {rejected}"
    return {
        "candidates": decision.candidates,
        "considered": considered,
        "winner": reserved,
        "why": why,
        "rejected": dict(decision.rejected),
        "skipped": skipped,
    }
