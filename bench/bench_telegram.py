"""How fast the Telegram webhook answers (Telegram's budget: it retries a webhook that has not
answered in time, and our API Gateway integration allows 29 s; the bot should need milliseconds).

Measured per update, as a warm Lambda invocation of the ``telegram`` function runs it
(``ig3.telegram.runtime.run_with_clients``: the container's loop, ``Bot`` and aiohttp session
reused), the Redis ``SET NX`` claim on the update id, ``Update.de_json``, then
- question: ``sendMessage`` (the placeholder) to a local Bot API stand-in on loopback + the job
  onto SQS (moto server on loopback);
- duplicate: the same update again (answered by the claim alone);
- command: ``/start`` (one ``sendMessage``).
Real Redis (``REDIS_URL``, unique key prefix, keys deleted afterwards). Loopback HTTP stands in for
the network: in AWS add the round trips to api.telegram.org and SQS.

Run: ``.venv/bin/python bench/bench_telegram.py [--n 200]``
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args(argv)

    import boto3
    import redis
    from moto.server import ThreadedMotoServer

    from ig3.telegram.bot import SqsJobQueue, WebhookBot
    from ig3.telegram.settings import BotSettings
    from ig3.telegram.store import RedisBotStore
    from tests.clients.botapi_standin import BOT_TOKEN, BotApiStandIn, update_json
    from tests.conftest import free_port

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per SQS call
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_REGION": "us-east-1"})
    from ig3.aws import reset_clients

    reset_clients()
    queue_url = boto3.client("sqs").create_queue(QueueName=f"bench-tg-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    standin = BotApiStandIn(BOT_TOKEN).start()
    r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    prefix = f"bench:tg:{uuid.uuid4().hex[:8]}:"
    store = RedisBotStore(r, prefix=prefix)
    settings = BotSettings(BOT_TOKEN, "s", standin.url, "http://gateway.invalid", "http://gateway.invalid",
                           "ig3/auto", 1.0, 12, 64)
    user = 4242
    store.redeem_link_code(store.new_link_code(user), "0x" + "ab" * 20)
    jobs = SqsJobQueue(queue_url)

    from ig3.telegram.runtime import close_clients, run_with_clients

    def invocation(update: dict) -> tuple[float, str]:
        t0 = time.perf_counter()
        outcome = run_with_clients(lambda bot, gw: WebhookBot(settings, store, jobs, bot, gw).handle(update), settings)
        return time.perf_counter() - t0, outcome

    times: dict[str, list[float]] = {"question": [], "duplicate": [], "command": []}
    base = uuid.uuid4().int % 10**8 * 10
    try:
        for i in range(3):  # warm imports and connections
            invocation(update_json(base - 10 - i, user, "/start"))
        for i in range(args.n):
            q = update_json(base + 3 * i, user, f"question {i}")
            dt, out = invocation(q)
            assert out == "queued", out
            times["question"].append(dt)
            dt, out = invocation(q)
            assert out == "duplicate", out
            times["duplicate"].append(dt)
            dt, out = invocation(update_json(base + 3 * i + 1, user, "/start"))
            assert out == "start", out
            times["command"].append(dt)
    finally:
        close_clients()
        keys = list(r.scan_iter(match=prefix + "*", count=1000))
        if keys:
            r.delete(*keys)
        standin.stop()
        moto.stop()
    sends = len(standin.calls_of("sendMessage", user))
    assert sends == 3 + 2 * args.n, f"{sends} sendMessage calls: duplicates must not send"
    figures = {}
    print(f"webhook invocation, n={args.n} each (loopback Bot API stand-in, moto SQS, real Redis)")
    print(f"{'update':<10} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, xs in times.items():
        ms = [x * 1000 for x in xs]
        figures[name] = {"p50_ms": statistics.median(ms), "p95_ms": _pct(ms, 95), "max_ms": max(ms)}
        print(f"{name:<10} {figures[name]['p50_ms']:>8.1f} {figures[name]['p95_ms']:>8.1f} {figures[name]['max_ms']:>8.1f}")
    return figures


if __name__ == "__main__":
    main()
