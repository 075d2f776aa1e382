"""``make load``: sustained load on the LLM gateway, open loop, from a second process over loopback.

Servers (each its own process, as in ``bench_gateway``): the zero-latency OpenAI-compatible mock
backend (``bench/llm_mock_backend.py``) and the gateway (``ig3.llm`` under uvicorn, one worker,
with its real request path: API-key auth, the admission Lua script on the real Redis, routing,
the pooled upstream client, batched usage events into a publisher that only counts them).

This process is the load generator. Open loop: request ``i`` is due at ``t0 + i / rate`` whatever
happened to the earlier ones, and its latency is measured from that due time to the last byte of
the answer — so a stalled server (or a generator that fell behind) shows up in the percentiles
instead of silently lowering the offered rate (no coordinated omission). The mix: 70 % chat,
20 % streamed chat (read to ``[DONE]``), 10 % embeddings; every prompt distinct.

1. Search: steps of ``--step-seconds`` at rising rates until one misses p99 < 250 ms, no error and
   the offered rate achieved; the sustained rate is the highest passing step whose p99 is within
   40 % of the goal (headroom: the last passing step is the knee, and past the knee an open-loop
   queue grows without bound). ``--rate`` skips the search.
2. Sustained: that rate for ``--seconds`` (``LOAD_SECONDS``, default 300). Every 2 s the RSS of
   both server processes is sampled; the memory slope is the least-squares fit over the samples
   after the first 20 % (start-up pools and caches fill first), in MiB per minute.

Pass (exit 0): sustained p99 < 250 ms end to end, zero errors, and the gateway's RSS slope under
1 MiB/min (a leak of one object per request at this rate would show as several MiB/min).
Figures to stdout and ``bench/results/load.json``.

Run: ``.venv/bin/python -m bench.load [--seconds 300] [--rate R] [--step-seconds 10]``
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
P99_GOAL_MS = 250.0
SLOPE_GOAL_MIB_PER_MIN = 1.0
HEADROOM = 0.4
MIX = (("chat", 0.7), ("stream", 0.2), ("embeddings", 0.1))
RATES = (10, 20, 30, 40, 50, 75, 100, 150, 200, 250, 300, 375, 450, 550, 650, 800, 1000, 1250, 1500, 2000)


class CountingPublisher:
    """Usage events are counted and dropped: a long run must measure the gateway, not a list."""

    def __init__(self) -> None:
        self.count = 0

    def publish(self, events: list) -> None:
        self.count += len(events)


def _kind(i: int) -> str:
    # A fixed interleaving (not random): every 10 requests carry exactly the mix.
    slot = i % 10
    return "chat" if slot < 7 else "stream" if slot < 9 else "embeddings"


def _request(i: int) -> tuple[str, bytes]:
    import orjson

    kind = _kind(i)
    if kind == "embeddings":
        return "/v1/embeddings", orjson.dumps({"model": "mock-model", "input": [f"passage {i} to embed"]})
    body = {"model": "mock-model", "max_tokens": 16,
            "messages": [{"role": "user", "content": f"Question {i}: what is the capital of France?"}]}
    if kind == "stream":
        body["stream"] = True
    return "/v1/chat/completions", orjson.dumps(body)


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def slope_mib_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, bytes) samples, in MiB per minute."""
    n = len(samples)
    if n < 3:
        return float("nan")
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    den = sum((t - mt) ** 2 for t, _ in samples)
    if den == 0:
        return float("nan")
    return sum((t - mt) * (v - mv) for t, v in samples) / den * 60 / (1024 * 1024)


async def run_rate(base: str, headers: dict, rate: float, seconds: float, first_id: int,
                   on_tick=None) -> dict:
    """Offer ``rate`` requests/s for ``seconds`` (open loop); figures of the requests completed."""
    import aiohttp

    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    lags: list[float] = []
    statuses: Counter = Counter()
    failures: Counter = Counter()
    inflight: set[asyncio.Task] = set()
    timeout = aiohttp.ClientTimeout(total=30)
    conn = aiohttp.TCPConnector(limit=512, keepalive_timeout=60)

    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        async def one(i: int, due: float) -> None:
            path, payload = _request(i)
            lags.append(time.perf_counter() - due)
            try:
                async with session.post(base + path, data=payload, headers=headers) as r:
                    data = await r.read()
                    statuses[r.status] += 1
                    if r.status != 200:
                        failures[f"http {r.status}"] += 1
                    elif _kind(i) == "stream" and not data.rstrip().endswith(b"data: [DONE]"):
                        failures["stream cut"] += 1
                    latencies.append((time.perf_counter() - due) * 1000)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                failures[type(exc).__name__] += 1

        # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
        clock = time.perf_counter
        t0 = clock() + 0.05
        end = t0 + seconds
        sent = 0
        next_tick = t0 + 2
        while True:
            now = clock()
            if now >= end:
                break
            due_count = int((now - t0) * rate) + 1 if now >= t0 else 0
            while sent < due_count:
                task = loop.create_task(one(first_id + sent, t0 + sent / rate))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                sent += 1
            if on_tick is not None and now >= next_tick:
                on_tick(now - t0)
                next_tick += 2
            await asyncio.sleep(max(0.0, min(0.005, t0 + sent / rate - clock())))
        if inflight:
            await asyncio.wait(inflight, timeout=35)
    latencies.sort()
    lags.sort()
    completed = len(latencies)
    return {"offered_rps": rate, "seconds": seconds, "sent": sent, "completed": completed,
            "achieved_rps": round(completed / seconds, 1),
            "p50_ms": round(_pct(latencies, 0.50), 2), "p90_ms": round(_pct(latencies, 0.90), 2),
            "p99_ms": round(_pct(latencies, 0.99), 2), "max_ms": round(latencies[-1], 2) if latencies else None,
            "generator_lag_p99_ms": round(_pct(lags, 0.99) * 1000, 2),
            "errors": sum(failures.values()), "failures": dict(failures),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}}


def passes(r: dict) -> bool:
    return (r["errors"] == 0 and r["completed"] == r["sent"] and r["p99_ms"] < P99_GOAL_MS
            and r["achieved_rps"] >= 0.97 * r["offered_rps"])


def _rss(pid: int) -> int:
    import psutil

    p = psutil.Process(pid)
    return p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("LOAD_SECONDS", 300)))
    ap.add_argument("--rate", type=float, help="sustain this rate (no search)")
    ap.add_argument("--step-seconds", type=float, default=10.0)
    ap.add_argument("--serve", nargs=4, metavar=("PORT", "UPSTREAM", "REDIS", "KEYFILE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        from bench.bench_gateway import serve_gateway

        port, upstream, redis_url, key_file = args.serve
        serve_gateway(int(port), upstream, redis_url, key_file, publisher=CountingPublisher())
        return 0

    from bench.bench_gateway import _free_port, _wait_http

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "POWERTOOLS_TRACE_DISABLED": "true",
           "PYTHONPATH": str(ROOT)}
    procs: list[subprocess.Popen] = []
    tmp = tempfile.mkdtemp(prefix="ig3-load-")
    record: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "goal_p99_ms": P99_GOAL_MS,
                    "mix": dict(MIX), "steps": []}
    try:
        mport, gport = _free_port(), _free_port()
        mock = subprocess.Popen([PY, str(HERE / "llm_mock_backend.py"), "--port", str(mport)], env=env,
                                stdout=subprocess.DEVNULL)
        procs.append(mock)
        upstream = f"http://127.0.0.1:{mport}/v1"
        _wait_http(upstream + "/models", 30)
        key_file = os.path.join(tmp, "key")
        gw = subprocess.Popen([PY, "-m", "bench.load", "--serve", str(gport), upstream, redis_url, key_file],
                              env=env, cwd=ROOT)
        procs.append(gw)
        _wait_http(f"http://127.0.0.1:{gport}/health", 60)
        key = pathlib.Path(key_file).read_text()
        base = f"http://127.0.0.1:{gport}"
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        next_id = 0

        def run(rate: float, seconds: float, on_tick=None) -> dict:
            nonlocal next_id
            r = asyncio.run(run_rate(base, headers, rate, seconds, next_id, on_tick))
            next_id += r["sent"]
            return r

        run(50, 3)  # warm-up: pools, Redis scripts, lazy imports
        rate = args.rate
        if rate is None:
            print(f"search: {args.step_seconds:.0f} s steps; pass = p99 < {P99_GOAL_MS:.0f} ms, no error, "
                  f"offered rate achieved", flush=True)
            print(f"{'offered':>8} {'achieved':>9} {'p50':>8} {'p99':>8} {'max':>8} {'gen lag p99':>12} "
                  f"{'errors':>6}  pass", flush=True)
            for step in RATES:
                r = run(step, args.step_seconds)
                ok = passes(r)
                record["steps"].append({**r, "pass": ok})
                print(f"{step:>8} {r['achieved_rps']:>9} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['max_ms']!s:>8} "
                      f"{r['generator_lag_p99_ms']:>12} {r['errors']:>6}  {ok}", flush=True)
                if not ok:
                    break
                # Sustained rate: the highest step with headroom (p99 within 40 % of the goal). The
                # last passing step is at the knee: five minutes of a busy machine tip it over, and
                # an open-loop queue past the knee grows without bound (seen: 450 req/s passed a
                # 10 s step at p99 207 ms, then collapsed to 30 s timeouts when sustained).
                if r["p99_ms"] <= HEADROOM * P99_GOAL_MS or rate is None:
                    rate = step
                time.sleep(2)  # drain
            if rate is None:
                # Still run the sustained phase (at the lowest rate): the memory figures stand on their
                # own, and the latencies say by how much the goal was missed on this machine.
                rate = RATES[0]
                print(f"no rate met the goal; sustaining the lowest ({rate} req/s) for the memory figures",
                      flush=True)
        print(f"\nsustained: {rate} req/s for {args.seconds:.0f} s", flush=True)
        samples: list[tuple[float, int, int]] = []

        def sample(t: float) -> None:
            samples.append((t, _rss(gw.pid), _rss(mock.pid)))

        sample(0.0)
        r = run(rate, args.seconds, sample)
        sample(args.seconds)
        after = [s for s in samples if s[0] >= 0.2 * args.seconds]
        mib = 1024 * 1024
        memory = {
            "samples": len(samples),
            "gateway_rss_start_mib": round(samples[0][1] / mib, 1),
            "gateway_rss_end_mib": round(samples[-1][1] / mib, 1),
            "gateway_rss_max_mib": round(max(s[1] for s in samples) / mib, 1),
            "gateway_slope_mib_per_min": round(slope_mib_per_min([(t, g) for t, g, _ in after]), 3),
            "backend_rss_start_mib": round(samples[0][2] / mib, 1),
            "backend_rss_end_mib": round(samples[-1][2] / mib, 1),
            "backend_slope_mib_per_min": round(slope_mib_per_min([(t, m) for t, _, m in after]), 3),
            "series": [[round(t, 1), round(g / mib, 2), round(m / mib, 2)] for t, g, m in samples],
        }
        ok = passes(r)
        flat = memory["gateway_slope_mib_per_min"] < SLOPE_GOAL_MIB_PER_MIN
        record["sustained"] = {**r, "pass": ok}
        record["memory"] = {**memory, "flat": flat}
        record["load_average"] = os.getloadavg()
        record["cpus"] = os.cpu_count()
        print(f"{'offered':>8} {'achieved':>9} {'completed':>9} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} "
              f"{'gen lag p99':>12} {'errors':>6}")
        print(f"{rate:>8} {r['achieved_rps']:>9} {r['completed']:>9} {r['p50_ms']:>8} {r['p90_ms']:>8} "
              f"{r['p99_ms']:>8} {r['max_ms']!s:>8} {r['generator_lag_p99_ms']:>12} {r['errors']:>6}")
        print(f"statuses {r['statuses']}; failures {r['failures'] or 'none'}")
        print(f"gateway RSS {memory['gateway_rss_start_mib']} -> {memory['gateway_rss_end_mib']} MiB "
              f"(max {memory['gateway_rss_max_mib']}), slope after the first 20 %: "
              f"{memory['gateway_slope_mib_per_min']} MiB/min; mock backend {memory['backend_rss_start_mib']} -> "
              f"{memory['backend_rss_end_mib']} MiB, slope {memory['backend_slope_mib_per_min']} MiB/min")
        print(f"p99 < {P99_GOAL_MS:.0f} ms with no errors: {ok}; memory flat (< {SLOPE_GOAL_MIB_PER_MIN} MiB/min): "
              f"{flat}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        return 0 if ok and flat else 1
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "load.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
