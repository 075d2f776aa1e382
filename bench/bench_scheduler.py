"""Scheduler decision latency and throughput at 1k / 10k / 100k registered devices, real Redis.

What one decision is: ``Scheduler.place`` end to end — the candidate-fetch script (for a request
with a client location: its grid cells; the index head comes from the dispatcher's view while
that is fresh, ``ig3.scheduler.view``), the pure Python decision (filter, score, top-K draw), the
reservation script — on one Python thread (which busy-waits for each reply up to
``IG3_REDIS_SPIN_US``, as the single-threaded dispatch function does; the batched run's threads block)
against the Redis at ``REDIS_URL`` (default 127.0.0.1:6379). Every placement is released
again (untimed) so the fleet stays in a steady state, as it is under a dispatcher that
completes work. Requests mix what dispatch sends: half carry the client's location, a third a
region constraint, a quarter a minimum context length.

Reported per fleet size: p50/p99/mean decision latency (and p50/p99 of the requests with and
without a client location apart: one round trip or two), decisions/s on one core (1/mean, one
thread, no pipelining across decisions), the client-side split (the two script round trips
vs. Python decision time) and Redis's own time inside the scripts (``INFO commandstats``
for EVALSHA: the server-side share of each round trip). Candidates per decision are reported
too: the per-decision cost is O(k log N) with k bounded (see ``ig3.scheduler.live``), so
latency should stay flat as N grows 100x.

Batched (``Scheduler.place_many``, what the dispatch function does with an SQS batch): the same
requests in batches of ``--batch`` (default 10, the dispatch queue's batch size) from
``--threads`` dispatcher threads of one process (default 2: while one thread waits on Redis the
other decides, so one process — one core, the GIL — keeps busy). Windows of 500 decisions are
timed wall-clock and released afterwards, untimed. A decision's latency there is its batch's
wall time. Reported: batched decisions/s (wall), the process's CPU per decision and the cores it
used (CPU/wall: ≤ 1 means one core did it), Redis's CPU per decision (exact only on
``--private-server``), and how often a reservation fell through to a later device.

The fleet is synthetic: devices around 60 cities on all continents, 3 regions, 1-4 slots,
3 models (one on every device, one on a third, one on 1%), two context lengths. Populating
uses the real heartbeat path (``LiveState.apply_heartbeats``: pipelined Lua scripts).

Keys live under a unique prefix and are deleted afterwards; nothing else on the server is touched.

Where: by default against a redis-server of its own (exact server CPU per decision) pinned to one
CPU, this process to another — Redis is a separate service in production, and a dispatcher is
one process on one core; ``--shared`` uses the Redis at ``REDIS_URL`` instead, unpinned.

Run: ``.venv/bin/python bench/bench_scheduler.py [--sizes 1000,10000,100000] [--decisions 5000]``
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid

SIZES = (1_000, 10_000, 100_000)
DECISIONS = 5_000
WARMUP = 300


def _cities(seed: int = 0) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [(rng.uniform(-45, 65), rng.uniform(-170, 170)) for _ in range(60)]


def _fleet(n: int, now: float, seed: int = 1):
    from ig3.wire import DeviceLoad, Heartbeat, Location, ModelInfo

    rng = random.Random(seed)
    cities = _cities()
    out = []
    for i in range(n):
        clat, clon = cities[rng.randrange(len(cities))]
        models = [
            ModelInfo(
                name="smollm2-135m",
                ctx=rng.choice((2048, 8192)),
                sha256="a" * 64,
                tokens_per_s=rng.uniform(5, 80),
            )
        ]
        if i % 3 == 0:
            models.append(ModelInfo(name="qwen2.5-0.5b", ctx=4096, sha256="b" * 64))
        if i % 100 == 0:
            models.append(ModelInfo(name="llama3.2-3b", ctx=8192, sha256="c" * 64))
        out.append(
            Heartbeat(
                thing=f"bench-{i:06d}",
                ts=now,
                region=rng.choice(("eu", "us", "ap")),
                location=Location(
                    lat=max(-89.0, min(89.0, clat + rng.gauss(0, 1.5))),
                    lon=max(-179.0, min(179.0, clon + rng.gauss(0, 1.5))),
                ),
                load=DeviceLoad(capacity=rng.randint(1, 4), in_flight=rng.choice((0, 0, 0, 1))),
                tokens_per_s=rng.uniform(5, 80),
                models=models,
            )
        )
    return out


def _requests(n: int, seed: int = 2):
    from ig3.scheduler import PlacementRequest

    rng = random.Random(seed)
    cities = _cities()
    out = []
    for i in range(n):
        # Clients live where devices do (80%: around the same cities), the rest anywhere.
        if rng.random() < 0.8:
            clat, clon = rng.choice(cities)
            near = (
                max(-89.0, min(89.0, clat + rng.gauss(0, 2))),
                max(-179.0, min(179.0, clon + rng.gauss(0, 2))),
            )
        else:
            near = (rng.uniform(-60, 70), rng.uniform(-179, 179))
        model = rng.choices(["smollm2-135m", "qwen2.5-0.5b", "llama3.2-3b"], weights=[80, 15, 5])[0]
        out.append(
            PlacementRequest(
                task_id=f"bench-task-{i}",
                model=model,
                region=rng.choice(("eu", "us", "ap")) if rng.random() < 0.33 else None,
                near=near if rng.random() < 0.5 else None,
                min_ctx=4096 if model == "smollm2-135m" and rng.random() < 0.25 else None,
                hold_s=60.0,
            )
        )
    return out


def _renamed(req, suffix: str):
    from dataclasses import replace

    return replace(req, task_id=req.task_id + suffix)


def _evalsha_stats(r) -> tuple[int, int]:
    # EVAL/EVALSHA time is the script's whole run, the redis.call()s inside it included.
    stats = r.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def _server_cpu(r) -> float:
    # The server's own CPU seconds (all clients: exact only on a server the benchmark has alone).
    cpu = r.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _delete_prefix(r, prefix: str) -> None:
    batch = []
    for key in r.scan_iter(match=prefix + "*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            r.unlink(*batch)
            batch.clear()
    if batch:
        r.unlink(*batch)


def run_size(r, n: int, decisions: int, private: bool = False, batch_size: int = 10, threads: int = 2) -> dict:
    from ig3.scheduler import LiveState, Scheduler, Weights

    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    live = LiveState(r, prefix=prefix, ttl_s=3600)
    try:
        now = time.time()
        fleet = _fleet(n, now)
        t0 = time.perf_counter()
        live.apply_heartbeats(fleet, now=now)
        populate_s = time.perf_counter() - t0
        del fleet
        sched = Scheduler(live, Weights(), random.Random(3))
        reqs = _requests(decisions + WARMUP)
        # What the dispatch function does after its first build (functions/dispatch/handler.py):
        # start-up's objects leave the collector's generations, so full collections stay short.
        gc.collect()
        gc.freeze()
        for req in reqs[:WARMUP]:
            p = sched.place(req)
            if p:
                sched.release(p.thing, req.task_id)

        latencies, cpu, fetch, reserve, decide, cands = [], [], [], [], [], []
        by_near: dict[bool, list[float]] = {True: [], False: []}
        misses = 0
        server_usec = server_calls = 0
        server_cpu = 0.0
        timed = reqs[WARMUP:]
        # Batches: place 100 (each timed), then release them (untimed), so Redis's own time for
        # the placements can be read from INFO commandstats around the placing window alone.
        for start in range(0, len(timed), 100):
            batch = timed[start : start + 100]
            calls0, usec0 = _evalsha_stats(r)
            cpu0 = _server_cpu(r)
            held = []
            for req in batch:
                c = time.process_time()
                t = time.perf_counter()
                p = sched.place(req)
                latencies.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
                by_near[req.near is not None].append(latencies[-1])
                if p is None:
                    misses += 1
                    continue
                held.append((p.thing, req.task_id))
                timing = p.reason["timing_us"]
                fetch.append(timing["fetch"])
                reserve.append(timing["reserve"])
                decide.append(timing["decide"])
                cands.append(p.reason["candidates"])
            calls1, usec1 = _evalsha_stats(r)
            server_cpu += _server_cpu(r) - cpu0
            server_usec += usec1 - usec0
            server_calls += calls1 - calls0
            for thing, task in held:
                sched.release(thing, task)
        # The floor on this machine right now: one redis-py round trip that does nothing.
        c, t = time.process_time(), time.perf_counter()
        for _ in range(1000):
            r.ping()
        ping_us = (time.perf_counter() - t) / 1000 * 1e6
        ping_cpu_us = (time.process_time() - c) / 1000 * 1e6
        batched = (
            run_batched(r, live, sched, [_renamed(q, "b") for q in timed], batch_size, threads, private)
            if batch_size > 1
            else {}
        )
        mean = statistics.fmean(latencies)
        client_cpu_us = statistics.fmean(cpu) * 1e6
        server_us = server_usec / decisions  # may include other clients' scripts: see calls
        server_cpu_us = server_cpu / decisions * 1e6
        return {
            "devices": n,
            "populate_s": round(populate_s, 2),
            "heartbeats_per_s": round(n / populate_s),
            "decisions": decisions,
            "no_fit": misses,
            "p50_ms": round(_pct(latencies, 0.50) * 1e3, 3),
            "p99_ms": round(_pct(latencies, 0.99) * 1e3, 3),
            "near_p50_ms": round(_pct(by_near[True], 0.50) * 1e3, 3),
            "near_p99_ms": round(_pct(by_near[True], 0.99) * 1e3, 3),
            "far_p50_ms": round(_pct(by_near[False], 0.50) * 1e3, 3),
            "far_p99_ms": round(_pct(by_near[False], 0.99) * 1e3, 3),
            "mean_ms": round(mean * 1e3, 3),
            "decisions_per_s": round(1 / mean),
            "client_cpu_us": round(client_cpu_us, 1),
            "redis_us": round(server_us, 1),
            "one_core_decisions_per_s": round(
                1e6 / (client_cpu_us + (server_cpu_us if private else server_us))
            ),
            "fetch_rtt_us": round(statistics.fmean(fetch), 1),
            "reserve_rtt_us": round(statistics.fmean(reserve), 1),
            "python_decide_us": round(statistics.fmean(decide), 1),
            "ping_rtt_us": round(ping_us, 1),
            "ping_cpu_us": round(ping_cpu_us, 1),
            "decisions_per_s_at_p50": round(1 / _pct(latencies, 0.50)),
            "evalsha_calls_per_decision": round(server_calls / decisions, 2),
            "redis_cpu_us": round(server_cpu_us, 1),
            "candidates_mean": round(statistics.fmean(cands), 1),
            "candidates_max": max(cands),
            **batched,
        }
    finally:
        gc.unfreeze()
        _delete_prefix(r, prefix)


def run_batched(r, live, sched, reqs, batch: int, threads: int, private: bool, window: int = 500) -> dict:
    """Batched placement from ``threads`` dispatcher threads of this process (see the docstring)."""
    import threading

    lat: list[float] = []
    placed = skipped = misses = 0
    wall = cpu = server_cpu = 0.0
    lock = threading.Lock()
    for start in range(0, len(reqs), window):
        chunk = reqs[start : start + window]
        share = [chunk[i::threads] for i in range(threads)]
        held: list[tuple[str, str]] = []
        barrier = threading.Barrier(threads + 1)

        def dispatcher(mine):
            barrier.wait()
            mine_lat, mine_held, mine_skipped, mine_miss = [], [], 0, 0
            for b in range(0, len(mine), batch):
                part = mine[b : b + batch]
                t = time.perf_counter()
                outs = sched.place_many(part)
                d = time.perf_counter() - t
                mine_lat += [d] * len(part)
                for q, o in zip(part, outs):
                    if o.placement is None:
                        mine_miss += 1
                    else:
                        mine_held.append((o.placement.thing, q.task_id))
                        mine_skipped += len(o.placement.reason.get("skipped") or ())
            with lock:
                lat.extend(mine_lat)
                held.extend(mine_held)
                nonlocal skipped, misses
                skipped += mine_skipped
                misses += mine_miss

        workers = [threading.Thread(target=dispatcher, args=(share[i],)) for i in range(threads)]
        for w in workers:
            w.start()
        cpu0, server0 = time.process_time(), _server_cpu(r)
        t0 = time.perf_counter()
        barrier.wait()
        for w in workers:
            w.join()
        wall += time.perf_counter() - t0
        cpu += time.process_time() - cpu0
        server_cpu += _server_cpu(r) - server0
        placed += len(held)
        for thing, task in held:
            sched.release(thing, task)
    n = len(reqs)
    return {
        "batch": batch,
        "threads": threads,
        "batched_p50_ms": round(_pct(lat, 0.50) * 1e3, 3),
        "batched_p99_ms": round(_pct(lat, 0.99) * 1e3, 3),
        "batched_decisions_per_s": round(n / wall),
        "batched_cpu_us": round(cpu / n * 1e6, 1),
        "batched_cores": round(cpu / wall, 2),
        "batched_redis_cpu_us": round(server_cpu / n * 1e6, 1) if private else None,
        "batched_skipped_per_decision": round(skipped / max(placed, 1), 3),
        "batched_no_fit": misses,
    }


def _private_server(pin: bool = False):
    """A redis-server of our own (same binary as the shared one) on a free port, no persistence.

    ``pin``: the server on the last CPU, this process on the first — Redis as the separate service
    it is in production (ElastiCache), the dispatcher alone on one core."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--private-server needs redis-server on PATH")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            proc.terminate()
            raise SystemExit("--pin needs two CPUs")
        os.sched_setaffinity(proc.pid, {cpus[-1]})
        os.sched_setaffinity(0, {cpus[0]})
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc, client
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit("private redis-server did not start")


def main(argv: list[str] | None = None) -> dict:
    import redis

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--decisions", type=int, default=DECISIONS)
    parser.add_argument("--batch", type=int, default=10, help="place_many batch size (1: skip the batched run)")
    parser.add_argument("--threads", type=int, default=2, help="dispatcher threads of the batched run")
    parser.add_argument(
        "--private-server",
        action="store_true",
        help="run against a redis-server of its own, so the server's CPU per decision is exact "
        "(the default when redis-server is on PATH)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="with --private-server: Redis on one CPU, the benchmark (the dispatcher) on another "
        "(the default with a private server on two or more CPUs)",
    )
    parser.add_argument(
        "--shared", action="store_true", help="use the Redis at REDIS_URL (shared, unpinned) instead"
    )
    # Imported by a runner, main() takes the defaults; the command line passes its own arguments.
    args = parser.parse_args([] if argv is None else argv)
    if not args.shared and not args.private_server and shutil.which("redis-server"):
        # The production shape: Redis is a service of its own (ElastiCache), the dispatcher a
        # process on one core; both on a shared 2-vCPU VM they would compete for the same cores.
        args.private_server = True
        args.pin = len(os.sched_getaffinity(0)) >= 2
    proc = None
    if args.private_server:
        proc, r = _private_server(pin=args.pin)
    else:
        r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        rows = [
            run_size(r, int(n), args.decisions, args.private_server, args.batch, args.threads)
            for n in args.sizes.split(",")
        ]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    cols = [
        "devices",
        "p50_ms",
        "p99_ms",
        "near_p50_ms",
        "near_p99_ms",
        "far_p50_ms",
        "far_p99_ms",
        "decisions_per_s",
        "decisions_per_s_at_p50",
        "client_cpu_us",
        "redis_us",
        "redis_cpu_us",
        "one_core_decisions_per_s",
        "fetch_rtt_us",
        "reserve_rtt_us",
        "python_decide_us",
        "ping_rtt_us",
        "ping_cpu_us",
        "candidates_mean",
        "evalsha_calls_per_decision",
        "no_fit",
        "heartbeats_per_s",
    ]
    if args.batch > 1:
        cols += ["batched_p50_ms", "batched_p99_ms", "batched_decisions_per_s", "batched_cpu_us", "batched_cores",
                 "batched_redis_cpu_us", "batched_skipped_per_decision"]
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(str(row[c]) for c in cols))
    server = "a private redis-server" if args.private_server else "the shared Redis"
    if args.pin:
        server += " on a CPU of its own (the benchmark pinned to another)"
    print(
        f"(one Python thread against {server} over TCP loopback; load average {os.getloadavg()[0]:.2f} on "
        f"{os.cpu_count()} CPUs. decisions_per_s = 1/mean wall latency. redis_us = time inside the scripts "
        f"(INFO commandstats); redis_cpu_us = the server's CPU per decision (INFO cpu: exact on a private "
        f"server, all clients' on a shared one). one_core_decisions_per_s = 1e6/(client CPU + server side), "
        f"server side = redis_cpu_us on a private server, redis_us otherwise: both on one core, no waits. "
        f"client_cpu_us of single decisions includes the lane's busy-wait for replies "
        f"(IG3_REDIS_SPIN_US={os.environ.get('IG3_REDIS_SPIN_US', 'default 300')}: CPU spent waiting), so "
        f"one_core_decisions_per_s understates; the batched run's threads do not spin.)"
    )
    return {"scheduler": rows, "server": "private" if args.private_server else "shared"}


if __name__ == "__main__":
    main(sys.argv[1:])
