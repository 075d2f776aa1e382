"""Network pub/sub at fleet scale: what 1,000 devices cost the aggregator, the broker and a viewer.

The question: does the dashboard path keep up with a large fleet without one message per heartbeat
per viewer? Set-up on the real Redis (unique key prefix, deleted afterwards, never a flush):
``DEVICES`` devices heart-beat into the scheduler's ``LiveState`` (what the telemetry function does
with heartbeats; the aggregator never sees a heartbeat), in ``ROUNDS`` rounds with changing load;
meanwhile ``TASKS`` tasks run their lifecycle as EventBridge->SQS records (submitted, assigned,
completed or failed) fed to the ``NetworkFeed`` in batches of ``BATCH`` (the pubsub function's
work per SQS batch), and a summary is built and published whenever the once-a-second lock allows.

Reported: per-event apply cost (one pipelined Lua call per event, per batch one round trip), the
cost of one summary at this fleet size (O(devices + 60 s window), read once a second at most,
however many viewers), its size (IoT Core caps messages at 128 KB), and the message count a
viewer receives (summaries published) next to the heartbeats and events that went in.

Run: ``.venv/bin/python bench/bench_pubsub.py [--devices 1000] [--tasks 2000]``
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import uuid

import orjson

DEVICES = 1_000
ROUNDS = 5
TASKS = 2_000
BATCH = 100
REGIONS = {"eu-central": (50.1, 8.7), "us-east": (40.7, -74.0), "ap-southeast": (1.35, 103.8),
           "sa-east": (-23.5, -46.6), "af-south": (-33.9, 18.4)}


def _record(kind: str, task: str, ts: float, **detail) -> dict:
    event_id = f"{task}:{kind}"
    return {"body": orjson.dumps({"id": str(uuid.uuid4()), "detail-type": kind, "source": "ig3",
                                  "detail": {"task_id": task, "event_id": event_id, "ts": ts, "model": "smollm2",
                                             "kind": "chat", **detail}}).decode()}


def main(devices: int = DEVICES, tasks: int = TASKS, rounds: int = ROUNDS) -> dict:
    import redis

    from ig3.pubsub.aggregate import NetworkAggregates, parse_eventbridge
    from ig3.pubsub.feed import NetworkFeed
    from ig3.scheduler import LiveState
    from ig3.wire import DeviceLoad, Heartbeat, Location, ModelInfo

    r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    prefix = f"bench:pubsub:{uuid.uuid4().hex[:8]}:"
    rng = random.Random(7)
    live = LiveState(r, prefix=prefix, ttl_s=60)
    agg = NetworkAggregates(r, prefix=prefix)
    published: list[int] = []
    summary_ms: list[float] = []

    def publish(topic: str, payload: bytes) -> None:
        published.append(len(payload))

    feed = NetworkFeed(agg, live, publish, schedule_tick=lambda delay_s: None)
    things = [(f"m1-{i:05d}", rng.choice(list(REGIONS))) for i in range(devices)]
    try:
        hb_s = 0.0
        heartbeats = 0
        t_events = 0.0
        events = 0
        task_ids = [str(uuid.uuid4()) for _ in range(tasks)]
        per_round = max(1, tasks // rounds)
        start = time.perf_counter()
        for rnd in range(rounds):
            now = time.time()
            beats = []
            for thing, region in things:
                lat, lon = REGIONS[region]
                beats.append(Heartbeat(thing=thing, ts=now, region=region,
                                       location=Location(lat=lat + rng.uniform(-2, 2), lon=lon + rng.uniform(-2, 2)),
                                       load=DeviceLoad(capacity=4, in_flight=rng.randint(0, 4)),
                                       models=[ModelInfo(name="smollm2-135m-instruct"), ModelInfo(name="tiny")]))
            t0 = time.perf_counter()
            for i in range(0, len(beats), 100):  # the telemetry function's batches
                live.apply_heartbeats(beats[i : i + 100], now=now)
            hb_s += time.perf_counter() - t0
            heartbeats += len(beats)
            records = []
            for task in task_ids[rnd * per_round : (rnd + 1) * per_round]:
                thing = rng.choice(things)[0]
                records += [_record("TaskSubmitted", task, now, status="PENDING"),
                            _record("TaskAssigned", task, now + 0.01, status="ASSIGNED", route="edge", device=thing,
                                    decision={"why": "best score"}),
                            _record("TaskCompleted" if rng.random() > 0.02 else "TaskFailed", task,
                                    now + rng.uniform(0.2, 3.0), status="COMPLETED", route="edge", device=thing)]
            for i in range(0, len(records), BATCH):
                # handle_records' two steps, timed apart: applying the batch, then the summary if due.
                batch = [e for e in (parse_eventbridge(x["body"]) for x in records[i : i + BATCH]) if e]
                t0 = time.perf_counter()
                agg.apply(batch)
                t_events += time.perf_counter() - t0
                events += len(batch)
                t0 = time.perf_counter()
                if feed.publish_if_due():
                    summary_ms.append((time.perf_counter() - t0) * 1000)
        elapsed = time.perf_counter() - start
        published_in_run = len(published)
        for _ in range(5):  # a few more summaries at this fleet size, for the timing
            t0 = time.perf_counter()
            s = feed.publish_now()
            summary_ms.append((time.perf_counter() - t0) * 1000)
        assert s["devices"]["online"] == devices, s["devices"]
        assert s["tasks"]["submitted"] == per_round * rounds, s["tasks"]
    finally:
        keys = list(r.scan_iter(match=prefix + "*", count=5000))
        for i in range(0, len(keys), 1000):
            r.delete(*keys[i : i + 1000])
    figures = {
        "devices": devices,
        "heartbeats": heartbeats,
        "heartbeat_apply_us": round(hb_s / heartbeats * 1e6, 1),
        "events": events,
        "event_apply_us": round(t_events / events * 1e6, 1),
        "summaries_timed": len(summary_ms),
        "summary_ms_p50": round(statistics.median(summary_ms), 2),
        "summary_ms_max": round(max(summary_ms), 2),
        "summary_bytes": published[-1],
        "run_s": round(elapsed, 2),
        "summaries_published": published_in_run,
        "max_summaries_allowed": int(elapsed) + 1,
        "messages_per_viewer_per_s": round(published_in_run / elapsed, 2),
    }
    print(f"{'figure':<28}{'value':>14}")
    for k, v in figures.items():
        print(f"{k:<28}{v:>14}")
    return figures


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=DEVICES)
    ap.add_argument("--tasks", type=int, default=TASKS)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    a = ap.parse_args()
    main(a.devices, a.tasks, a.rounds)
