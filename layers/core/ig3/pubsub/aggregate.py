"""Network aggregates in Redis: domain events in, bounded counters and a short feed out.

Fed by the ``network`` queue (EventBridge rule: task and device events -> SQS -> the ``pubsub``
function, batched). Design decisions:
- **O(1) per event, O(window + devices) per summary.** An event is one Lua script call (dedupe,
  per-second counters, a latency histogram, the feed), pipelined per batch: one round trip per
  batch. A summary reads 60 per-second hashes, the feed, the offline set and the live devices
  (one pipelined ``HMGET`` per device, capped at ``MAX_DEVICES_READ``). Nothing grows with the
  number of heartbeats or viewers.
- **Idempotent.** SQS and EventBridge deliver at least once: each event is applied once per dedupe
  key (``SET NX``, an hour), inside the same script that applies it, so a crash cannot leave an
  event counted but unmarked or marked but uncounted. Task events dedupe on their deterministic
  ``event_id`` (one per transition); device events on the EventBridge envelope id (their
  ``event_id`` names the episode to the second, the envelope id is exact).
- **Latency** is submit -> terminal on the events' own timestamps (``ts`` from the publisher); the
  submit time waits under a per-task key with a TTL, so abandoned tasks leak nothing.
- **One publisher per second.** ``claim_publish`` is a ``SET NX PX`` lock: however many function
  instances consume the queue, at most one summary a second goes out; a batch that loses the race
  leaves the summary dirty and a delayed tick publishes it (``ig3.pubsub.feed``).
- All keys share the ``{pubsub}`` hash tag (Redis Cluster: the scripts touch several keys).
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from ig3.pubsub.summary import FEED_LENGTH, LATENCY_BOUNDS_MS, WINDOW_S, build_summary

HASH_TAG = "{pubsub}"
DEDUPE_S = 3600
BUCKET_KEEP_S = WINDOW_S * 3
SUBMIT_KEEP_S = 3600
OFFLINE_KEEP = 200
MAX_DEVICES_READ = 5000  # beyond this the summary counts devices but reads only the most recent
TASK_EVENTS = ("TaskSubmitted", "TaskAssigned", "TaskCompleted", "TaskFailed", "TaskRequeued")
DEVICE_EVENTS = ("DeviceOnline", "DeviceOffline")
NETWORK_EVENTS = TASK_EVENTS + DEVICE_EVENTS

_APPLY = """
local p = ARGV[1]
if not redis.call('SET', p .. 'seen:' .. ARGV[2], '1', 'NX', 'EX', tonumber(ARGV[8])) then return 0 end
local kind, sec, ts, subject = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local bucket = p .. 's:' .. sec
redis.call('HINCRBY', p .. 'totals', kind, 1)
redis.call('HINCRBY', bucket, kind, 1)
redis.call('EXPIRE', bucket, tonumber(ARGV[9]))
local latency = -1
if kind == 'TaskSubmitted' then
  redis.call('SET', p .. 'sub:' .. subject, ARGV[5], 'EX', tonumber(ARGV[10]), 'NX')
elseif kind == 'TaskCompleted' or kind == 'TaskFailed' then
  local submitted = redis.call('GET', p .. 'sub:' .. subject)
  if submitted then
    latency = math.max(0, math.floor((ts - tonumber(submitted)) * 1000 + 0.5))
    if kind == 'TaskCompleted' then
      redis.call('HINCRBY', bucket, 'lat_n', 1)
      redis.call('HINCRBY', bucket, 'lat_sum', latency)
      local i = #BOUNDS
      for j = 1, #BOUNDS do
        if latency <= BOUNDS[j] then i = j - 1; break end
      end
      redis.call('HINCRBY', bucket, 'h' .. i, 1)
    end
  end
elseif kind == 'DeviceOffline' then
  redis.call('ZADD', p .. 'offline', ts, subject)
  redis.call('ZREMRANGEBYRANK', p .. 'offline', 0, -(tonumber(ARGV[11]) + 1))
elseif kind == 'DeviceOnline' then
  redis.call('ZREM', p .. 'offline', subject)
end
if ARGV[7] ~= '' then
  local item = cjson.decode(ARGV[7])
  if latency >= 0 then item['latency_ms'] = latency end
  redis.call('LPUSH', p .. 'feed', cjson.encode(item))
  redis.call('LTRIM', p .. 'feed', 0, tonumber(ARGV[12]) - 1)
end
redis.call('SET', p .. 'dirty', '1')
return 1
""".replace("#BOUNDS", str(len(LATENCY_BOUNDS_MS))).replace(
    "BOUNDS[j]", "({" + ",".join(str(b) for b in LATENCY_BOUNDS_MS) + "})[j]")


def parse_eventbridge(body: str | bytes) -> dict[str, Any] | None:
    """An EventBridge envelope (as an SQS target receives it) -> a flat event; None if not ours."""
    try:
        env = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(env, dict) or not isinstance(env.get("detail"), dict):
        return None
    kind = env.get("detail-type")
    if kind not in NETWORK_EVENTS:
        return None
    detail = env["detail"]
    ts = detail.get("ts")
    if not isinstance(ts, (int, float)):
        return None
    subject = detail.get("task_id") if kind in TASK_EVENTS else detail.get("device_id")
    if not isinstance(subject, str) or not subject:
        return None
    if kind in TASK_EVENTS:
        dedupe = detail.get("event_id") if isinstance(detail.get("event_id"), str) else None
    else:
        dedupe = env.get("id") if isinstance(env.get("id"), str) else None
    dedupe = dedupe or f"{kind}:{subject}:{ts!r}"
    return {"kind": kind, "ts": float(ts), "subject": subject, "dedupe": dedupe, "detail": detail}


def feed_item(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the public feed shows of an event: no account, no prompt, no output."""
    kind, d = event["kind"], event["detail"]
    if kind not in TASK_EVENTS:
        return {"type": kind, "ts": round(event["ts"], 3), "device": event["subject"]}
    decision = d.get("decision") if isinstance(d.get("decision"), dict) else {}
    why = decision.get("why")
    item = {"type": kind, "ts": round(event["ts"], 3), "task_id": event["subject"], "status": d.get("status"),
            "model": d.get("model"), "kind": d.get("kind"), "route": d.get("route"), "device": d.get("device"),
            "attempt": d.get("attempt")}
    if isinstance(why, str):
        item["why"] = why[:160]
    if kind == "TaskRequeued":
        item["failed_device"] = d.get("failed_device")
        item["error"] = d.get("error")
    return {k: v for k, v in item.items() if v is not None}


class NetworkAggregates:
    """The Redis adapter (see the module docstring)."""

    def __init__(self, redis: Any, prefix: str = "ig3:"):
        self.redis = redis
        self.p = f"{prefix}{HASH_TAG}:"
        self._apply = redis.register_script(_APPLY)

    def apply(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Apply parsed events (``parse_eventbridge``); returns how many were new."""
        pipe = self.redis.pipeline(transaction=False)
        n = 0
        for e in events:
            item = feed_item(e)
            self._apply(keys=[self.p + "totals"], client=pipe,
                        args=[self.p, e["dedupe"], e["kind"], int(e["ts"]), repr(e["ts"]), e["subject"],
                              orjson.dumps(item).decode() if item else "", DEDUPE_S, BUCKET_KEEP_S, SUBMIT_KEEP_S,
                              OFFLINE_KEEP, FEED_LENGTH])
            n += 1
        if not n:
            return 0
        return sum(int(r) for r in pipe.execute())

    # -- publishing cadence -------------------------------------------------------------

    def claim_publish(self, period_ms: int = 1000) -> bool:
        """True for at most one caller per period (the one that should publish now)."""
        return bool(self.redis.set(self.p + "pub-lock", "1", nx=True, px=period_ms))

    def lock_wait_ms(self) -> int:
        return max(0, int(self.redis.pttl(self.p + "pub-lock")))

    def take_dirty(self) -> bool:
        """Whether anything changed since the last published summary (and clear the mark)."""
        return bool(self.redis.getdel(self.p + "dirty"))

    def is_dirty(self) -> bool:
        return bool(self.redis.exists(self.p + "dirty"))

    def claim_tick(self, ttl_ms: int) -> bool:
        """True if no tick is pending (the caller then sends one); expires in case a tick is lost."""
        return bool(self.redis.set(self.p + "tick", "1", nx=True, px=ttl_ms))

    def tick_consumed(self) -> None:
        self.redis.delete(self.p + "tick")

    # -- reading ------------------------------------------------------------------------

    def read(self, now: float) -> dict[str, Any]:
        now_s = int(now)
        pipe = self.redis.pipeline(transaction=False)
        for sec in range(now_s - WINDOW_S + 1, now_s + 1):
            pipe.hgetall(self.p + f"s:{sec}")
        pipe.hgetall(self.p + "totals")
        pipe.lrange(self.p + "feed", 0, FEED_LENGTH - 1)
        pipe.zrevrange(self.p + "offline", 0, OFFLINE_KEEP - 1, withscores=True)
        raw = pipe.execute()
        buckets = {}
        for i, sec in enumerate(range(now_s - WINDOW_S + 1, now_s + 1)):
            if raw[i]:
                buckets[sec] = {k.decode(): int(v) for k, v in raw[i].items()}
        totals = {k.decode(): int(v) for k, v in raw[WINDOW_S].items()}
        feed = [orjson.loads(x) for x in raw[WINDOW_S + 1]]
        offline = [(t.decode(), float(s)) for t, s in raw[WINDOW_S + 2]]
        return {"buckets": buckets, "totals": totals, "feed": feed, "offline": offline}


_DEVICE_FIELDS = ("cap", "inflight", "region", "lat", "lon", "models", "status")


def read_live_devices(live: Any, now: float, limit: int = MAX_DEVICES_READ) -> tuple[list[dict[str, Any]], int]:
    """(live devices, how many are live) from the scheduler's ``LiveState``: one pipelined read.

    Reads the device hashes' fields directly (the layout ``LiveState.get`` documents) instead of
    ``get()`` per device: ``get`` is a round trip each, and a summary must stay one round trip
    per 500 devices.
    """
    horizon = now - live.ttl_s
    r = live.redis
    total = int(r.zcount(live.hb_key, horizon, "+inf"))
    things = [t.decode() if isinstance(t, bytes) else t
              for t in r.zrevrangebyscore(live.hb_key, "+inf", horizon, start=0, num=limit)]
    out: list[dict[str, Any]] = []
    for i in range(0, len(things), 500):
        chunk = things[i : i + 500]
        pipe = r.pipeline(transaction=False)
        for t in chunk:
            pipe.hmget(live.p + "d:" + t, *_DEVICE_FIELDS)
        for thing, values in zip(chunk, pipe.execute()):
            cap, inflight, region, lat, lon, models, status = (v.decode() if isinstance(v, bytes) else v
                                                               for v in values)
            if cap is None:
                continue  # removed between the two reads
            out.append({"thing": thing, "capacity": int(cap or 0), "in_flight": int(inflight or 0),
                        "region": region or None, "lat": float(lat) if lat else None,
                        "lon": float(lon) if lon else None, "status": status,
                        "models": [m for m in (models or "").split("\n") if m]})
    return out, total


def summarize(aggregates: NetworkAggregates, live: Any, now: float | None = None,
              dlq: Mapping[str, int | None] | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    devices, total = read_live_devices(live, now)
    agg = aggregates.read(now)
    live_things = {d["thing"] for d in devices}
    # A device that came back before its DeviceOnline event was applied is not "offline".
    offline = [(t, ts) for t, ts in agg["offline"] if t not in live_things]
    return build_summary(now=now, devices=devices, devices_total=total, offline=offline, buckets=agg["buckets"],
                         totals=agg["totals"], feed=agg["feed"], dlq=dlq)
