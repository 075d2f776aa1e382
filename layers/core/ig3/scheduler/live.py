"""Live device state in Redis: heartbeats with a TTL, free-capacity indexes, slot reservations.

The durable registry stays in DynamoDB; this is the fast, disposable view the scheduler reads.
All mutations are Lua scripts (``ig3.scheduler.lua``), so the indexes, the catalogue counters and
the reservations never disagree, even with many dispatchers and telemetry consumers at once.

Design decisions:
- **One hash slot.** Every key carries the ``{live}`` hash tag: the scripts touch a device's hash,
  its reservations and several indexes at once, which Redis Cluster (ElastiCache Serverless)
  only allows inside one slot. One shard runs ~100k small scripts/s; sharding by region (a tag
  per region) is the next step if a single shard ever becomes the limit. The scripts build key
  names from the prefix and declare only one key (``KEYS[1]``, for routing): Redis Cluster allows
  undeclared keys of the declared slot in scripts without a shebang, but a proxy that insists
  on every key being declared would need them passed in KEYS (not done).
- **Free-capacity indexes, not scans.** ``f:<model>`` / ``f:<model>|<region>`` hold exactly the
  online, non-draining devices with a free slot, ordered by a static quality (capability x
  reliability, ``core.index_quality``). The same devices are also listed per cell of a lat/lon
  grid at four resolutions (0.25, 1, 4, 15 degrees; ``lua.GRID_DEGREES``) for proximity. A device
  enters/leaves every index when its free count crosses zero (reserve, release, heartbeat,
  expiry), so a decision never visits full or offline devices.
- **Per-decision cost** (N = devices in the index; k = candidates, bounded by configuration:
  8 best + 4 random + 8 near by default, ~17 on average): ``ZREVRANGE`` O(log N + k),
  ``ZRANDMEMBER`` O(k), then, when the client's location is known, per grid level (finest first,
  stopping at the first level that yields enough devices) one ``EXISTS`` over the 3x3 cell block
  and a ``ZREVRANGE`` O(log n + k) per cell read, nearest cell first; then two ``HMGET`` for all
  candidates at once (``snap``: a JSON snapshot of each device's live fields, ``om:<model>``: its
  offer). The reservation is O(log N) per device tried (plus ~10 index updates when the device
  fills up). So O(k log N), whatever the fleet size and however dense the fleet is around the
  client. At most two script calls per decision (one when the scheduler's view of the index
  head serves a request without a location, ``ig3.scheduler.view``); inside Redis a
  ``redis.call`` costs several times its command (measured), which is why candidates are read in
  bulk rather than one hash each. Why a
  grid and not Redis GEO: ``GEOSEARCH`` scans every member of the geohash boxes covering its
  radius, so its cost follows the local density (measured: ~380 us per call at 100k devices
  around 60 cities). The price is precision: a device is found by cell, so the winner on pure
  proximity is the very nearest for most clients near devices, and otherwise one from the
  nearest cells (see tests/scheduler). Proximity is then scored on the exact haversine distance.
- **Free slots** = heartbeat capacity - ``max(reported in-flight, live reservations)``: the
  heartbeat lags new reservations, and reservations miss work orphaned by a crashed dispatcher.
  A release caps the reported in-flight count at the reservations still held, so a finished
  task frees its slot before the next heartbeat.
- **Reservations** are per task id (a task holds at most one; a repeated ``place`` returns it),
  expire after ``hold_s`` (a crashed dispatcher leaks nothing for long), and ``expire()`` sweeps
  the ones no one touches again.
- **Heartbeat TTL** is measured on the receiver's clock (device clocks drift); out-of-order
  heartbeats (older device ``ts`` than the one applied) are ignored.
- **Reliability** is a decayed success rate (half-life configurable) with a Beta prior, kept in its
  own key that outlives the device's live state (a device that flaps keeps its record).
"""

from __future__ import annotations

import functools
import math
import os
import select
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from hiredis import pack_command

from ig3.scheduler import lua
from ig3.scheduler.core import (
    RELIABILITY_PRIOR_FAILURES,
    RELIABILITY_PRIOR_SUCCESSES,
    Candidate,
    ModelOffer,
    Weights,
    reliability_rate,
)
from ig3.wire import THING_NAME_RE

if TYPE_CHECKING:  # pragma: no cover
    import redis as redis_lib

    from ig3.wire import Heartbeat

HASH_TAG = "{live}"
_PIPELINE_CHUNK = 500
_SWEEP_LIMIT = 1000


def _s(value: Any) -> str | None:
    if value is None or value is False:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _f(value: Any) -> float | None:
    value = _s(value)
    return float(value) if value not in (None, "") else None


class _Lane:
    """A dedicated connection per thread for the decision path's scripts.

    redis-py's client-level call (pool checkout, retry and observability wrappers) costs ~3x the
    CPU of writing the command and reading the reply on a connection (measured here: 31 us vs
    10 us per PING), and a decision makes two such calls. So the hot scripts (fetch, reserve,
    release: all safe to send twice) go straight to a connection of their own, one per thread
    (connections are not thread-safe). Clients without a single connection pool (cluster
    clients) take the ordinary path.
    """

    def __init__(self, redis: redis_lib.Redis, spin_us: float = 0.0):
        self.spin_s = spin_us / 1e6
        pool = getattr(redis, "connection_pool", None)
        self._factory = (
            (lambda: pool.connection_class(**pool.connection_kwargs))
            if pool is not None and hasattr(pool, "connection_class")
            else None
        )
        self._local = threading.local()
        self._users_lock = threading.Lock()
        self._users = 0  # threads of this process that opened a lane connection
        self._users_pid = os.getpid()

    def connection(self) -> Any | None:
        if self._factory is None:
            return None
        conn = getattr(self._local, "conn", None)
        pid = os.getpid()
        if conn is None or self._local.pid != pid:  # a forked child opens its own
            conn = self._local.conn = self._factory()
            self._local.pid = pid
            with self._users_lock:
                if self._users_pid != pid:
                    self._users, self._users_pid = 0, pid
                self._users += 1
        return conn

    def await_reply(self, conn: Any) -> None:
        """Busy-wait up to ``spin_s`` for the first byte of a reply, then let the read block.

        A blocking read sleeps in the kernel and is woken when the reply lands: on this VM that
        wake-up is ~45 us of a 64 us loopback round trip (measured: EVALSHA of ``return 1``, p50 64 us
        blocking vs 20 us polling; p99 107 vs 37). A decision waits on one or two such replies of
        ~50-150 us, so polling for them takes ~45 us off each. The price is the dispatcher's CPU
        while it waits, which it could not use anyway (one decision at a time per thread; a Lambda
        is billed for the wall time, not the CPU). Bounded: past ``spin_s`` (a slow reply, a
        failover) the read blocks as usual. ``IG3_REDIS_SPIN_US`` = 0 turns it off.

        Only while one thread uses the lane (the dispatch function's case): with several, another
        thread could use the core this one would spin on (measured with 2 dispatcher threads on one
        core: 0.90x the batched decisions/s when both spun)."""
        if self.spin_s <= 0 or self._users > 1:
            return
        sock = getattr(conn, "_sock", None)
        if sock is None:
            return
        poller = getattr(self._local, "poller", None)
        if poller is None or self._local.polled is not sock:
            poller = self._local.poller = select.poll()
            poller.register(sock, select.POLLIN)
            self._local.polled = sock
        perf = time.perf_counter
        deadline = perf() + self.spin_s
        while not poller.poll(0):
            if perf() >= deadline:
                return


SPIN_ENV = "IG3_REDIS_SPIN_US"
DEFAULT_SPIN_US = 300.0


def _spin_us(value: float | None) -> float:
    """The lane's busy-wait bound (see ``_Lane.await_reply``): the argument, else the env, else 300."""
    if value is None:
        raw = os.environ.get(SPIN_ENV, "")
        try:
            value = float(raw) if raw.strip() else DEFAULT_SPIN_US
        except ValueError as exc:
            raise ValueError(f"{SPIN_ENV}={raw!r} is not a number") from exc
    value = float(value)
    if not (math.isfinite(value) and 0 <= value <= 100_000):
        raise ValueError(f"{SPIN_ENV} must be between 0 and 100000 microseconds, got {value!r}")
    return value


def _send(conn: Any, *command: Any) -> None:
    # redis-py's packer walks every argument in Python first; hiredis's takes them as they are.
    conn.send_packed_command([pack_command(command)])


class _Script:
    """EVALSHA with a reload on NOSCRIPT (a failover or SCRIPT FLUSH empties the cache)."""

    def __init__(self, redis: redis_lib.Redis, source: str, lane: _Lane | None = None):
        self.redis = redis
        self.source = source
        self.sha = _s(redis.script_load(source))
        self.lane = lane

    def __call__(self, key: str, args: Sequence[Any]) -> Any:
        import redis as redis_lib

        conn = self.lane.connection() if self.lane is not None else None
        if conn is None:
            try:
                return self.redis.evalsha(self.sha, 1, key, *args)
            except redis_lib.exceptions.NoScriptError:
                self.sha = _s(self.redis.script_load(self.source))
                return self.redis.evalsha(self.sha, 1, key, *args)
        for attempt in (0, 1):
            try:
                _send(conn, "EVALSHA", self.sha, 1, key, *args)
                self.lane.await_reply(conn)
                return conn.read_response()
            except redis_lib.exceptions.NoScriptError:
                self.sha = _s(self.redis.script_load(self.source))
            except (redis_lib.exceptions.ConnectionError, redis_lib.exceptions.TimeoutError, OSError):
                # A dropped connection (failover, idle timeout): reconnect once. The lane's scripts
                # are safe to run twice (a read, or idempotent per task).
                conn.disconnect()
                if attempt:
                    raise
        _send(conn, "EVALSHA", self.sha, 1, key, *args)
        return conn.read_response()

    def pipelined(self, key: str, arg_lists: Sequence[Sequence[Any]]) -> list[Any]:
        """Several calls of a read-only script in one round trip on the lane (the batch fetch).

        Every reply is read even when one is an error, so the connection stays in step; a NOSCRIPT
        reloads the script and reruns the whole batch (safe: the script only reads)."""
        import redis as redis_lib

        conn = self.lane.connection() if self.lane is not None else None
        if conn is None:
            return self.run_many(key, arg_lists)
        for attempt in (0, 1):
            try:
                conn.send_packed_command(
                    [b"".join([pack_command(("EVALSHA", self.sha, 1, key, *args)) for args in arg_lists])]
                )
                replies: list[Any] = []
                error: Exception | None = None
                self.lane.await_reply(conn)  # the first reply; the rest follow it
                for _ in arg_lists:
                    try:
                        replies.append(conn.read_response())
                    except redis_lib.exceptions.ResponseError as exc:
                        error = error or exc
                        replies.append(None)
            except (redis_lib.exceptions.ConnectionError, redis_lib.exceptions.TimeoutError, OSError):
                conn.disconnect()
                if attempt:
                    raise
                continue
            if error is None:
                return replies
            if isinstance(error, redis_lib.exceptions.NoScriptError) and not attempt:
                self.sha = _s(self.redis.script_load(self.source))
                continue
            raise error
        raise AssertionError("unreachable")  # pragma: no cover

    def run_many(self, key: str, arg_lists: Iterable[Sequence[Any]]) -> list[Any]:
        import redis as redis_lib

        arg_lists = list(arg_lists)
        out: list[Any] = []
        for start in range(0, len(arg_lists), _PIPELINE_CHUNK):
            chunk = arg_lists[start : start + _PIPELINE_CHUNK]
            for attempt in (0, 1):
                pipe = self.redis.pipeline(transaction=False)
                for args in chunk:
                    pipe.evalsha(self.sha, 1, key, *args)
                try:
                    out.extend(pipe.execute())
                    break
                except redis_lib.exceptions.NoScriptError:
                    if attempt:
                        raise
                    # Scripts are idempotent per heartbeat (stale ones are ignored): rerunning is safe.
                    self.sha = _s(self.redis.script_load(self.source))
        return out


@functools.lru_cache(maxsize=1 << 14)
def _offer_from_text(model: str, raw: bytes | str) -> ModelOffer:
    """A model offer from its stored JSON text (``P om:<model>``), each distinct text parsed once.

    The text carries the device's own tokens/s for the model, so a large fleet has about as many
    texts as devices. A C LRU (shared by every LiveState of the process) of the 16,384 most recent
    (~14 MB with their texts, measured): ~2/3 of lookups hit at 100k devices in
    bench_scheduler (the top of each model's index and the busy cities' devices recur); a hit
    is one C call, where the two dict caches it replaces cost a tuple and two lookups."""
    o = orjson.loads(raw)
    return ModelOffer(model, o.get("ctx"), o.get("quant"), o.get("sha256"), tuple(o.get("kinds") or ()), o.get("tps"))


class Fetched(NamedTuple):
    """One candidate fetch: ``candidates[:top]`` are the index head, ``[top:index]`` the random
    sample of the index, the rest the client's grid cells."""

    total: int  # devices with a free slot in the index
    top: int
    index: int
    candidates: list[Candidate]


class LiveState:
    """Redis adapter for the live state of the fleet (see the module docstring)."""

    def __init__(
        self,
        redis: redis_lib.Redis,
        prefix: str = "ig3:",
        ttl_s: float = 30.0,
        *,
        reliability_half_life_s: float = 3600.0,
        reliability_keep_s: int = 30 * 86400,
        reference_tps: float | None = None,
        spin_us: float | None = None,
    ):
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        # The index's static quality uses the scoring's tokens/s reference (IG3_SCHED_REFERENCE_TPS).
        self.reference_tps = float(
            reference_tps if reference_tps is not None else Weights.from_env().reference_tps
        )
        if not self.reference_tps > 0:
            raise ValueError("reference_tps must be > 0")
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = float(ttl_s)
        self.reliability_half_life_s = float(reliability_half_life_s)
        self.reliability_keep_s = int(reliability_keep_s)
        self.p = f"{prefix}{HASH_TAG}:"
        self.hb_key = self.p + "hb"
        scripts = lua.scripts(reference_tps=self.reference_tps)
        self._heartbeat = _Script(redis, scripts["HEARTBEAT"])
        lane = _Lane(redis, _spin_us(spin_us))
        self._fetch = _Script(redis, scripts["FETCH"], lane)
        self._reserve = _Script(redis, scripts["RESERVE"], lane)
        self._reserve_many = _Script(redis, scripts["RESERVE_MANY"], lane)
        self._release = _Script(redis, scripts["RELEASE"], lane)
        self._expire = _Script(redis, scripts["EXPIRE"])
        self._outcome = _Script(redis, scripts["OUTCOME"])
        self._remove = _Script(redis, scripts["REMOVE"])
        self._reputation = _Script(redis, scripts["REPUTATION"])

    # -- heartbeats, expiry, deregistration ------------------------------------------------

    def apply_heartbeats(self, beats: list[Heartbeat], now: float | None = None) -> list[str]:
        """Apply a batch (one pipeline); returns the things that came online (were not live)."""
        now = time.time() if now is None else now
        # Thing names become key parts and "\t"-joined members: only valid names are applied.
        beats = [b for b in beats if THING_NAME_RE.match(b.thing)]
        args = [self._heartbeat_args(b, now) for b in beats]
        results = self._heartbeat.run_many(self.hb_key, args)
        came_online: dict[str, None] = {}  # ordered, each thing once
        for beat, result in zip(beats, results, strict=False):
            if int(result) == 1:
                came_online[beat.thing] = None
        return list(came_online)

    def _heartbeat_args(self, b: Heartbeat, now: float) -> list[Any]:
        # Model names and regions become key parts joined with "|" and "\n": anything carrying
        # those is not routable and is left out rather than corrupting the indexes.
        region = b.region if b.region and "|" not in b.region and "\n" not in b.region else ""
        models: dict[str, Any] = {}
        for m in b.models:
            if m.name and "|" not in m.name and "\n" not in m.name:
                models[m.name] = m
        lat = repr(b.location.lat) if b.location else ""
        lon = repr(b.location.lon) if b.location else ""
        tps = repr(b.tokens_per_s) if b.tokens_per_s else ""
        per_model: list[str] = []
        for name, m in models.items():
            offer = orjson.dumps(
                {
                    "ctx": m.ctx,
                    "quant": m.quant,
                    "sha256": m.sha256,
                    "kinds": list(m.kinds),
                    "tps": m.tokens_per_s or None,
                }
            ).decode()
            per_model += [name, offer, repr(m.tokens_per_s) if m.tokens_per_s else ""]
        # Everything structural in one string: equal to the stored one => the cheap path.
        sig = orjson.dumps([b.load.capacity, region, lat, lon, tps, b.status, per_model]).decode()
        prior = RELIABILITY_PRIOR_SUCCESSES / (RELIABILITY_PRIOR_SUCCESSES + RELIABILITY_PRIOR_FAILURES)
        return [
            self.p,
            repr(now),
            b.thing,
            repr(b.ts),
            b.load.capacity,
            b.load.in_flight,
            region,
            lat,
            lon,
            tps,
            b.status,
            sig,
            repr(prior),
            len(models),
            *per_model,
        ]

    def expire(self, now: float | None = None) -> list[str]:
        """Remove devices whose heartbeat TTL passed (returned, for ``DeviceOffline`` events) and
        sweep expired reservations. Idempotent: a second call returns what expired since."""
        now = time.time() if now is None else now
        gone: list[str] = []
        while True:
            out = self._expire(self.hb_key, [self.p, repr(now), repr(self.ttl_s), _SWEEP_LIMIT])
            swept = int(out[0])
            batch = [_s(t) for t in out[1:]]
            gone.extend(t for t in batch if t)
            if swept < _SWEEP_LIMIT and len(batch) < _SWEEP_LIMIT:
                return gone

    def remove(self, thing: str) -> None:
        """Deregistration: the device leaves every index at once (its reservations go with it)."""
        self._remove(self.hb_key, [self.p, thing])

    # -- reads ---------------------------------------------------------------------------

    def get(self, thing: str, now: float | None = None) -> dict | None:
        """The device's live state, reservations included; ``None`` when it is not live."""
        now = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.p + "d:" + thing)
        pipe.zrange(self.p + "res:" + thing, 0, -1, withscores=True)
        pipe.zscore(self.hb_key, thing)
        raw, res, seen = pipe.execute()
        if not raw or seen is None:
            return None
        h = {_s(k): _s(v) for k, v in raw.items()}
        models = []
        for name in (h.get("models") or "").split("\n"):
            if not name:
                continue
            offer = orjson.loads(h.get("o:" + name) or "{}")
            offer.pop("tps", None)  # reported as tokens_per_s
            models.append({"name": name, **offer, "tokens_per_s": _f(h.get("mt:" + name))})
        reservations = [{"task_id": _s(t), "expires_at": float(exp)} for t, exp in res if float(exp) > now]
        capacity = int(h.get("cap") or 0)
        in_flight = int(h.get("inflight") or 0)
        lat, lon = _f(h.get("lat")), _f(h.get("lon"))
        return {
            "thing": thing,
            "online": float(seen) >= now - self.ttl_s,
            "last_seen": float(seen),
            "device_ts": _f(h.get("ts")),
            "status": h.get("status"),
            "region": h.get("region") or None,
            "location": {"lat": lat, "lon": lon} if lat is not None and lon is not None else None,
            "capacity": capacity,
            "in_flight": in_flight,
            "reserved": len(reservations),
            "free": max(capacity - max(in_flight, len(reservations)), 0),
            "reservations": reservations,
            "tokens_per_s": _f(h.get("tps")),
            "reliability": _f(h.get("rel")),
            "reputation": _f(h.get("rep")),
            "models": models,
        }

    def things(self, offset: int = 0, limit: int = 100) -> list[str]:
        """Live things, most recently heard first (pagination for ``GET /v1/devices``)."""
        return [_s(t) for t in self.redis.zrevrange(self.hb_key, offset, offset + limit - 1)]

    def count(self) -> int:
        return int(self.redis.zcard(self.hb_key))

    def catalogue(self) -> list[dict]:
        """Per model: live devices, regions, capacity and free slots, mean generation speed, context
        lengths and task kinds on offer (maintained counters: O(models), not O(devices)).

        Counts include devices whose heartbeat lapsed but that ``expire()`` has not swept yet."""
        names = sorted(_s(m) for m in self.redis.smembers(self.p + "models"))
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.p + "c:" + name)
            pipe.zcard(self.p + "f:" + name)
        raw = pipe.execute()
        out = []
        for i, name in enumerate(names):
            h = {_s(k): _s(v) for k, v in raw[2 * i].items()}
            devices = int(h.get("devices") or 0)
            if devices <= 0:
                continue
            contexts = {int(k[2:]): int(v) for k, v in h.items() if k.startswith("x:")}
            tps_n = int(h.get("tps_n") or 0)
            out.append(
                {
                    "model": name,
                    "devices": devices,
                    "devices_with_free_slots": int(raw[2 * i + 1]),
                    "capacity": int(h.get("cap") or 0),
                    "free_capacity": int(h.get("free") or 0),
                    "regions": {k[2:]: int(v) for k, v in sorted(h.items()) if k.startswith("r:")},
                    "tokens_per_s": round(float(h["tps_sum"]) / tps_n, 2)
                    if tps_n > 0 and h.get("tps_sum")
                    else None,
                    "ctx": max(contexts) if contexts else None,
                    "contexts": dict(sorted(contexts.items())),
                    "kinds": sorted(k[2:] for k in h if k.startswith("k:")),
                }
            )
        return out

    def serves(self, model: str) -> bool:
        """Whether any live device offers ``model`` (one O(1) read; the cloud-fallback shortcut)."""
        return int(self.redis.hget(self.p + "c:" + model, "devices") or 0) > 0

    # -- reliability ---------------------------------------------------------------------

    def record_outcome(self, thing: str, ok: bool, now: float | None = None) -> float:
        """One success/failure into the decayed success rate; returns the new rate.

        Issue #13's verifiable-work signals feed the same call (or the ``reputation`` weight)."""
        now = time.time() if now is None else now
        rate = self._outcome(
            self.hb_key,
            [
                self.p,
                repr(now),
                thing,
                1 if ok else 0,
                repr(self.reliability_half_life_s),
                repr(RELIABILITY_PRIOR_SUCCESSES),
                repr(RELIABILITY_PRIOR_FAILURES),
                self.reliability_keep_s,
            ],
        )
        return float(_s(rate))

    def set_reputation(self, thing: str, value: float | None) -> None:
        """Issue #13's hook: an external reputation in [0, 1] (``None`` clears it). It is scored
        with ``Weights.reputation`` (0 by default) and outlives the device's live state."""
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError("reputation must be within [0, 1]")
        self._reputation(
            self.hb_key, [self.p, thing, "" if value is None else repr(float(value)), self.reliability_keep_s]
        )

    def reliability(self, thing: str) -> float:
        raw = self.redis.hmget(self.p + "rel:" + thing, "s", "n")
        return reliability_rate(_f(raw[0]) or 0.0, _f(raw[1]) or 0.0)

    # -- the scheduler's two round trips -----------------------------------------------------

    def fetch(
        self,
        model: str,
        region: str | None,
        near: tuple[float, float] | None,
        *,
        top: int,
        sample: int,
        nearest: int,
        offset: int,
        now: float,
    ) -> Fetched:
        """(devices with a free slot in the index, bounded candidates and where each came from: the
        index head, the random sample, the grid) — one script call."""
        args = self._fetch_args(model, region, near, top, sample, nearest, offset, now)
        return self._parse_candidates(model, self._fetch(self.hb_key, args), now)

    def fetch_many(self, queries: Sequence[dict[str, Any]], *, now: float) -> list[Fetched]:
        """``fetch`` for several queries (keyword dicts of its arguments) in one round trip."""
        if not queries:
            return []
        arg_lists = [
            self._fetch_args(q["model"], q["region"], q["near"], q["top"], q["sample"], q["nearest"],
                             q["offset"], now)
            for q in queries
        ]
        replies = self._fetch.pipelined(self.hb_key, arg_lists)
        return [self._parse_candidates(q["model"], raw, now) for q, raw in zip(queries, replies)]

    def _fetch_args(self, model, region, near, top, sample, nearest, offset, now) -> list[Any]:
        lat, lon = (repr(near[0]), repr(near[1])) if near is not None else ("", "")
        return [self.p, repr(now), repr(self.ttl_s), model, region or "", lat, lon, top, sample, nearest, offset]

    def _parse_candidates(self, model: str, raw: Any, now: float) -> Fetched:
        if len(raw) == 1:
            return Fetched(int(raw[0]), 0, 0, [])
        horizon = now - self.ttl_s
        out = []
        offer_of = _offer_from_text
        got_top, got_index = int(raw[1]), int(raw[2])
        n_top = n_index = 0
        names, snaps = orjson.loads(raw[3]), orjson.loads(raw[4])
        for k, thing in enumerate(names):
            snap = snaps[k]
            if snap is None:  # the index and the snapshots change together: never, but be safe
                continue
            cap, inflight, nres, region, lat, lon, tps, status, rel, rep, seen = snap
            offer = raw[k + 5]
            # Positional: this runs ~16 times per decision.
            out.append(
                Candidate(
                    thing,
                    cap,
                    inflight,
                    nres,
                    region,
                    lat,
                    lon,
                    tps,
                    0.8 if rel is None else rel,
                    rep,
                    seen is not None and seen >= horizon,
                    status == "draining",
                    {model: offer_of(model, offer)} if offer is not None else {},
                )
            )
            if k < got_top:
                n_top += 1
            if k < got_index:
                n_index += 1
        return Fetched(int(raw[0]), n_top, n_index, out)

    def reserve(
        self,
        task_id: str,
        model: str,
        region: str | None,
        order: Sequence[str],
        *,
        hold_s: float,
        exclude: Iterable[str],
        now: float,
    ) -> tuple[str | None, int, list[str]]:
        """Reserve a slot on the first of ``order`` that still has one, re-checked atomically.

        Returns (thing or None, its 1-based position in ``order`` (0: the task already held it), skipped)."""
        excluded = list(exclude)
        out = self._reserve(
            self.hb_key,
            [
                self.p,
                repr(now),
                repr(self.ttl_s),
                repr(float(hold_s)),
                task_id,
                model,
                region or "",
                len(excluded),
                *excluded,
                *order,
            ],
        )
        thing = _s(out[0])
        position = int(out[1]) if thing is not None else -1
        skipped = [_s(s) for s in out[2 if thing is not None else 1 :]]
        return thing, position, skipped

    def reserve_many(
        self, items: Sequence[dict[str, Any]], *, now: float
    ) -> list[tuple[str | None, int, list[str]]]:
        """``reserve`` for several tasks in one script call, in order (keyword dicts of its
        arguments: task_id, model, region, order, hold_s, exclude); one result per item."""
        if not items:
            return []
        argv: list[Any] = [self.p, repr(now), repr(self.ttl_s), len(items)]
        for it in items:
            excluded = list(it["exclude"])
            part = [it["task_id"], it["model"], it["region"] or "", repr(float(it["hold_s"])), len(excluded),
                    *excluded, *it["order"]]
            argv.append(len(part))
            argv.extend(part)
        out = self._reserve_many(self.hb_key, argv)
        results: list[tuple[str | None, int, list[str]]] = []
        at = 0
        for _ in items:
            n = int(out[at])
            reply = out[at + 1 : at + 1 + n]
            at += 1 + n
            thing = _s(reply[0])
            position = int(reply[1]) if thing is not None else -1
            skipped = [_s(x) for x in reply[2 if thing is not None else 1 :]]
            results.append((thing, position, skipped))
        return results

    def release(self, thing: str, task_id: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return int(self._release(self.hb_key, [self.p, repr(now), thing, task_id])) == 1

    def offer(self, thing: str, model: str) -> dict | None:
        raw = self.redis.hget(self.p + "d:" + thing, "o:" + model)
        return orjson.loads(raw) if raw else None
