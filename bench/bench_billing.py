"""Billing: cost of the money path, and whether moto can stand in for DynamoDB transactions.

Cases:
- ``price (cost)``: ``PriceBook.cost`` per call (Decimal arithmetic + one ceiling rounding), µs.
- ``hold+settle (memory)``: one hold then one settle on the in-memory store: our logic alone, µs.
- ``hold+settle (moto, serialized)``: the DynamoDB adapter over HTTP against moto server behind a
  one-request-at-a-time front (as tests/billing uses), from T threads: requests/s and per-pair
  latency. moto's own speed dominates; this is not a DynamoDB figure, it shows our adapter makes
  3 round trips per request (get_hold + get_entry + the settle transaction, after the hold's 1).
- ``race (moto raw)`` vs ``race (moto serialized)``: T threads place H holds against a balance
  that covers K: how many were accepted, whether the account item's ``held`` equals the sum of
  active hold items, HTTP 500s seen. On raw moto (no locking in its TransactWriteItems, rollback
  by restoring a table copy) the books can break under threads; that is moto, not the design —
  the serialized front restores DynamoDB's isolation and the books stay exact.

- ``cloud reservation (Redis lease)``: what an LLM-gateway cloud request adds for billing
  (``ig3.llm.spend``): one reserve (Lua, before the upstream call) + one settle (Lua, after), on
  the real Redis (``REDIS_URL``, else 127.0.0.1:6379) through the gateway's lean client, inside a
  lease that covers the run: per-request round trips sequentially (p50/p99 µs), CPU per
  reserve+settle, and throughput at 64 concurrent requests. Then the same flood against moto
  (serialized) with leases of 8 requests: how many DynamoDB hold transactions it took.

Run: ``.venv/bin/python bench/bench_billing.py [--threads 16] [--holds 400] [--covers 40]``.
The machine is shared: figures are noisy.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for k, v in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "POWERTOOLS_TRACE_DISABLED": "true",
}.items():
    os.environ.setdefault(k, v)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Serialized:
    def __init__(self, app):
        self._app, self._lock = app, threading.Lock()

    def __call__(self, environ, start_response):
        with self._lock:
            return list(self._app(environ, start_response))


def _moto(serialized: bool):
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    port = _free_port()
    server = make_server(
        "127.0.0.1", port, _Serialized(app) if serialized else app, True, request_handler=MotoRequestHandler
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}", server


def _store(endpoint: str, env: dict[str, str]):
    import boto3
    from botocore.config import Config
    from ig3.billing.dynamo import DynamoBillingStore

    client = boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(max_pool_connections=64, retries={"mode": "standard", "max_attempts": 3}),
    )
    return DynamoBillingStore(
        env["IG3_TABLE_ACCOUNTS"], env["IG3_TABLE_LEDGER"], env["IG3_TABLE_HOLDS"], client=client
    )


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _race(svc, threads: int, holds: int, covers: int) -> dict:
    from botocore.exceptions import ClientError
    from ig3.errors import PaymentRequired

    account = "0x" + uuid.uuid4().hex
    svc.credit(account, covers * 100, f"seed-{account}")
    counts = {"held": 0, "402": 0, "error": 0}
    lock = threading.Lock()

    def attempt(i: int) -> None:
        try:
            svc.hold(account, f"{account}-{i}", 100, 600)
            key = "held"
        except PaymentRequired:
            key = "402"
        except (ClientError, Exception):  # noqa: BLE001 - a 500 from moto after retries
            key = "error"
        with lock:
            counts[key] += 1

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(attempt, range(holds)))
    acct = svc.store.get_account(account)
    active = [h for h in svc.store.iter_active_holds() if h.account == account]
    return {
        "accepted": counts["held"],
        "refused_402": counts["402"],
        "errors": counts["error"],
        "account_held": acct.held if acct else 0,
        "active_hold_items_sum": sum(h.amount for h in active),
        "available": acct.available if acct else 0,
        "books_exact": bool(acct)
        and acct.held == sum(h.amount for h in active)
        and acct.available >= 0
        and counts["held"] <= covers,
    }


def _spend_figures(ser_store, book) -> dict:
    """The cloud-request reservation path: Redis Lua round trips inside a lease."""
    import asyncio

    import redis as redis_lib
    from ig3.billing.service import BillingService
    from ig3.billing.store import MemoryBillingStore
    from ig3.llm.redisguard import CircuitBreaker, RedisGuard
    from ig3.llm.spend import CloudSpend

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench:spend:{uuid.uuid4().hex[:8]}:"
    out: dict = {}

    async def run() -> None:
        guard = RedisGuard(url, timeout_s=2.0, breaker=CircuitBreaker(failures_to_open=1000))
        mem = BillingService(MemoryBillingStore(), book)
        mem.credit("0xbench", 10**15, "seed")
        spend = CloudSpend(mem, guard, prefix=prefix, lease_factor=10**6, lease_max=10**13, idle_close_s=0)
        amount = spend.estimate("smollm2-135m-instruct", "chat", 300, 256)
        await spend.reserve("0xbench", "warm", amount)  # the one lease (+ script loads)
        n = 3000
        lat: list[float] = []
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(n):
            s = time.perf_counter()
            r = await spend.reserve("0xbench", f"s{i}", amount)
            await spend.settle(r, amount // 3)
            lat.append((time.perf_counter() - s) * 1e6)
        out["spend_seq_pair_us_p50"] = statistics.median(lat)
        out["spend_seq_pair_us_p99"] = _pct(lat, 0.99)
        out["spend_cpu_per_pair_us"] = (time.process_time() - c0) / n * 1e6
        out["spend_seq_pairs_per_s"] = n / (time.perf_counter() - t0)

        async def one(i: int) -> None:
            r = await spend.reserve("0xbench", f"c{i}", amount)
            await spend.settle(r, amount // 3)

        t0 = time.perf_counter()
        for start in range(0, n, 64):
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + 64))))
        out["spend_64_concurrent_pairs_per_s"] = n / (time.perf_counter() - t0)
        out["spend_leases_memory"] = spend.leases_acquired

        # A small-lease flood against moto: DynamoDB hold transactions per request.
        dyn = BillingService(ser_store, book)
        account = "0x" + uuid.uuid4().hex
        dyn.credit(account, 100 * amount, f"seed-{account}")
        spend2 = CloudSpend(dyn, guard, prefix=prefix + "d:", lease_factor=8, idle_close_s=0)
        served = 0
        for start in range(0, 400, 64):
            rs = await asyncio.gather(*(spend2.reserve(account, f"d{i}", amount)
                                        for i in range(start, min(400, start + 64))), return_exceptions=True)
            ok = [r for r in rs if not isinstance(r, Exception)]
            served += len(ok)
            for r in ok:
                await spend2.settle(r, amount // 3)
        await spend2.drain()
        await spend2.close_idle()
        await spend2.drain()
        out["spend_moto_requests"] = served
        out["spend_moto_lease_holds"] = spend2.leases_acquired
        out["spend_moto_lease_shrinks"] = spend2.lease_shrinks
        await guard.close()

    try:
        asyncio.run(run())
    finally:
        r = redis_lib.Redis.from_url(url)
        keys = list(r.scan_iter(match=prefix + "*", count=1000))
        if keys:
            r.delete(*keys)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--holds", type=int, default=400)
    p.add_argument("--covers", type=int, default=40)
    p.add_argument("--pairs", type=int, default=300)
    args = p.parse_args(argv)

    from ig3.billing.pricing import price_book
    from ig3.billing.service import BillingService
    from ig3.billing.store import MemoryBillingStore
    from ig3.local.resources import provision
    from ig3.topology import TOPOLOGY

    figures: dict = {}
    book = price_book()
    n = 20_000
    t0 = time.perf_counter_ns()
    for i in range(n):
        book.cost(
            "smollm2-135m-instruct",
            "cloud",
            "chat",
            prompt_tokens=1000 + i,
            completion_tokens=300,
            sagemaker_ms=1234,
        )
    figures["price_cost_us"] = (time.perf_counter_ns() - t0) / n / 1000

    mem = BillingService(MemoryBillingStore(), book)
    mem.credit("0xbench", 10**12, "seed")
    t0 = time.perf_counter_ns()
    for i in range(n):
        mem.hold("0xbench", f"m{i}", 500, 60)
        mem.settle(f"m{i}", 321)
    figures["hold_settle_memory_us"] = (time.perf_counter_ns() - t0) / n / 1000

    raw_endpoint, raw_server = _moto(serialized=False)
    ser_endpoint, ser_server = _moto(serialized=True)
    try:
        env = provision(TOPOLOGY, endpoint_url=ser_endpoint, stage="b" + uuid.uuid4().hex[:6])
        ser = BillingService(_store(ser_endpoint, env), book)
        raw = BillingService(_store(raw_endpoint, env), book)  # same in-process backend, no lock

        account = "0x" + uuid.uuid4().hex
        ser.credit(account, 10**12, f"seed-{account}")
        latencies: list[float] = []
        lat_lock = threading.Lock()

        def pair(i: int) -> None:
            start = time.perf_counter()
            ser.hold(account, f"{account}-p{i}", 500, 60)
            ser.settle(f"{account}-p{i}", 321)
            with lat_lock:
                latencies.append((time.perf_counter() - start) * 1000)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.threads) as pool:
            list(pool.map(pair, range(args.pairs)))
        wall = time.perf_counter() - t0
        figures["moto_serialized_pairs_per_s"] = args.pairs / wall
        figures["moto_serialized_pair_p50_ms"] = statistics.median(latencies)
        figures["moto_serialized_pair_p99_ms"] = _pct(latencies, 0.99)
        figures.update(_spend_figures(_store(ser_endpoint, env), book))
        figures["race_raw"] = _race(raw, args.threads, args.holds, args.covers)
        figures["race_serialized"] = _race(ser, args.threads, args.holds, args.covers)
    finally:
        raw_server.shutdown()
        ser_server.shutdown()

    print(f"{'case':42} {'figure':>14}")
    print(f"{'price (cost), per call':42} {figures['price_cost_us']:>11.1f} µs")
    print(f"{'hold+settle (memory store), per request':42} {figures['hold_settle_memory_us']:>11.1f} µs")
    print(
        f"{'hold+settle (moto, serialized), throughput':42} "
        f"{figures['moto_serialized_pairs_per_s']:>10.1f} /s"
    )
    print(f"{'hold+settle (moto, serialized), p50':42} {figures['moto_serialized_pair_p50_ms']:>11.1f} ms")
    print(f"{'hold+settle (moto, serialized), p99':42} {figures['moto_serialized_pair_p99_ms']:>11.1f} ms")
    print(
        f"{'cloud reservation (Redis), reserve+settle':42} p50 {figures['spend_seq_pair_us_p50']:>6.0f} µs, "
        f"p99 {figures['spend_seq_pair_us_p99']:.0f} µs, CPU {figures['spend_cpu_per_pair_us']:.0f} µs"
    )
    print(
        f"{'cloud reservation (Redis), throughput':42} "
        f"{figures['spend_seq_pairs_per_s']:>8.0f} /s sequential, "
        f"{figures['spend_64_concurrent_pairs_per_s']:.0f} /s at 64 concurrent"
    )
    print(
        f"{'cloud reservation, leases of 8 (moto)':42} {figures['spend_moto_requests']} requests, "
        f"{figures['spend_moto_lease_holds']} DynamoDB holds, {figures['spend_moto_lease_shrinks']} shrinks"
    )
    for name in ("race_raw", "race_serialized"):
        r = figures[name]
        print(
            f"{name + f' ({args.holds} holds, covers {args.covers})':42} accepted={r['accepted']} "
            f"402={r['refused_402']} errors={r['errors']} held={r['account_held']} "
            f"hold-items={r['active_hold_items_sum']} exact={r['books_exact']}"
        )
    return figures


if __name__ == "__main__":
    main()
