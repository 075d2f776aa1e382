"""The network summary: one bounded document per tick, built from aggregates (pure logic, no AWS, no Redis).

Why a summary and not a stream of raw events: a browser (or an MQTT subscriber) must not receive
one message per heartbeat per device — with 1,000 devices heart-beating every few seconds that is
hundreds of messages a second per viewer. Instead the aggregator keeps counters and a short feed,
and publishes this document at most once a second. Its size is bounded whatever the fleet size:
regions and models are aggregated, the per-device list is capped (``MAX_DEVICE_ROWS``, most loaded
first, so a viewer sees where the work is) and the feed holds the last ``FEED_LENGTH`` entries.
IoT Core refuses messages over 128 KB; the caps keep a 1,000-device summary well under it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

SUMMARY_VERSION = 1
WINDOW_S = 60  # throughput/latency series length (one point per second)
RATE_WINDOW_S = 10  # "per second now" is averaged over this many seconds
MAX_DEVICE_ROWS = 300
MAX_OFFLINE_ROWS = 50
FEED_LENGTH = 100
# Latency histogram bucket upper bounds in ms (the last bucket is open). Percentiles are read off
# the buckets: coarse, but exact counts merge across seconds with plain additions.
LATENCY_BOUNDS_MS = (50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)


def latency_bucket(latency_ms: int) -> int:
    for i, bound in enumerate(LATENCY_BOUNDS_MS):
        if latency_ms <= bound:
            return i
    return len(LATENCY_BOUNDS_MS)


def percentile_from_histogram(hist: list[int], q: float) -> int | None:
    """Upper bound (ms) of the bucket holding the q-quantile; None when empty."""
    total = sum(hist)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank and n:
            return LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else LATENCY_BOUNDS_MS[-1] * 2
    return None


def _load(in_flight: int, capacity: int) -> float:
    return round(min(in_flight / capacity, 1.0), 3) if capacity > 0 else 0.0


def build_summary(*, now: float, devices: Iterable[Mapping[str, Any]], devices_total: int | None = None,
                  offline: Iterable[tuple[str, float]] = (), buckets: Mapping[int, Mapping[str, int]],
                  totals: Mapping[str, int], feed: Iterable[Mapping[str, Any]],
                  dlq: Mapping[str, int | None] | None = None) -> dict[str, Any]:
    """The summary document.

    devices: live devices (``thing, region, lat, lon, capacity, in_flight, status, models``);
    offline: (thing, since) of devices that went offline recently; buckets: per-second counters
    keyed by Unix second (``TaskSubmitted``, ``TaskCompleted``, ``TaskFailed``, ``TaskRequeued``,
    ``lat_n``, ``lat_sum``, ``h<i>`` histogram counts); totals: counters since start; feed: newest
    first; dlq: messages waiting per dead-letter queue (None: unknown).
    """
    regions: dict[str, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    online = capacity_total = in_flight_total = 0
    for d in devices:
        online += 1
        cap, busy = int(d.get("capacity") or 0), int(d.get("in_flight") or 0)
        capacity_total += cap
        in_flight_total += min(busy, cap) if cap else busy
        region = d.get("region") or "unknown"
        r = regions.setdefault(region, {"region": region, "online": 0, "capacity": 0, "in_flight": 0,
                                        "_lat": 0.0, "_lon": 0.0, "_located": 0})
        r["online"] += 1
        r["capacity"] += cap
        r["in_flight"] += busy
        if d.get("lat") is not None and d.get("lon") is not None:
            r["_lat"] += float(d["lat"])
            r["_lon"] += float(d["lon"])
            r["_located"] += 1
        names = list(d.get("models") or ())
        for name in names:
            m = models.setdefault(name, {"model": name, "devices": 0, "capacity": 0, "in_flight": 0, "regions": {}})
            m["devices"] += 1
            m["capacity"] += cap
            m["in_flight"] += busy
            m["regions"][region] = m["regions"].get(region, 0) + 1
        rows.append({"thing": d["thing"], "region": region, "lat": d.get("lat"), "lon": d.get("lon"),
                     "capacity": cap, "in_flight": busy, "load": _load(busy, cap), "status": d.get("status"),
                     "models": names})
    for r in regions.values():
        located = r.pop("_located")
        lat, lon = r.pop("_lat"), r.pop("_lon")
        r["lat"], r["lon"] = (round(lat / located, 3), round(lon / located, 3)) if located else (None, None)
        r["load"] = _load(r["in_flight"], r["capacity"])
    for m in models.values():
        m["free"] = max(m["capacity"] - m["in_flight"], 0)
    rows.sort(key=lambda row: (-row["load"], row["thing"]))
    truncated = len(rows) > MAX_DEVICE_ROWS
    rows = sorted(rows[:MAX_DEVICE_ROWS], key=lambda row: row["thing"])

    now_s = int(now)
    series = []
    hist = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    lat_n = lat_sum = failed_window = completed_recent = 0
    for sec in range(now_s - WINDOW_S + 1, now_s + 1):
        b = buckets.get(sec) or {}
        n, s = int(b.get("lat_n", 0)), int(b.get("lat_sum", 0))
        completed, failed = int(b.get("TaskCompleted", 0)), int(b.get("TaskFailed", 0))
        series.append({"t": sec, "submitted": int(b.get("TaskSubmitted", 0)), "completed": completed,
                       "failed": failed, "requeued": int(b.get("TaskRequeued", 0)),
                       "latency_ms": round(s / n) if n else None})
        lat_n += n
        lat_sum += s
        failed_window += failed
        if sec > now_s - RATE_WINDOW_S:
            completed_recent += completed
        for i in range(len(hist)):
            hist[i] += int(b.get(f"h{i}", 0))
    offline_rows = [{"thing": t, "since": round(ts, 3)} for t, ts in list(offline)[:MAX_OFFLINE_ROWS]]
    dlq = dict(dlq or {})
    known = [v for v in dlq.values() if v is not None]
    return {
        "v": SUMMARY_VERSION,
        "ts": round(now, 3),
        "devices": {"online": online, "listed": len(rows), "truncated": truncated,
                    "total": devices_total if devices_total is not None else online,
                    "offline_recent": len(offline_rows), "capacity": capacity_total, "in_flight": in_flight_total,
                    "load": _load(in_flight_total, capacity_total)},
        "regions": sorted(regions.values(), key=lambda r: r["region"]),
        "models": sorted(models.values(), key=lambda m: m["model"]),
        "device_list": rows,
        "offline": offline_rows,
        "throughput": {"window_s": WINDOW_S, "completed_per_s": round(completed_recent / RATE_WINDOW_S, 3),
                       "series": series},
        "latency": {"mean_ms": round(lat_sum / lat_n) if lat_n else None,
                    "p50_ms": percentile_from_histogram(hist, 0.5), "p95_ms": percentile_from_histogram(hist, 0.95),
                    "samples": lat_n},
        "tasks": {k: int(totals.get(t, 0)) for k, t in (("submitted", "TaskSubmitted"), ("assigned", "TaskAssigned"),
                                                          ("completed", "TaskCompleted"), ("failed", "TaskFailed"),
                                                          ("requeued", "TaskRequeued"))},
        "failures": {"failed_total": int(totals.get("TaskFailed", 0)), "failed_window": failed_window,
                     "requeued_total": int(totals.get("TaskRequeued", 0)),
                     "dlq_total": sum(known) if known else None, "dlq": dlq},
        "feed": list(feed)[:FEED_LENGTH],
    }
