"""Added latency of the LLM gateway over calling its upstream directly, vs LiteLLM's own proxy.

Three targets, each a separate single-worker process on this machine, one zero-latency
OpenAI-compatible backend (``bench/llm_mock_backend.py``) behind them:
- ``direct``: the backend itself (the baseline);
- ``ig3``: our gateway (``ig3.llm``) under uvicorn (httptools + uvloop), with its real request
  path: API-key auth (the identity module's Authorizer/ApiKeyService; in-memory key store), the
  admission Lua script on the real Redis (key + wallet rpm/tpm limits), routing, the pooled
  aiohttp upstream client, write-behind tpm correction and batched usage events (an in-memory
  publisher: EventBridge calls happen off the request path either way);
- ``litellm``: LiteLLM's proxy (``litellm[proxy]`` in its own venv, ``bench/.venvs``), master-key
  auth, no database, the same backend.
For each, non-streaming chat completions at concurrency 1/16/64 (a bounded number of requests per
point), latency p50/p99 measured by an aiohttp client; "added" = target minus direct at the same
percentile. Also: the gateway's CPU time per request (its process's CPU seconds / requests) and
the import time of the llm module without litellm.

Run: ``.venv/bin/python bench/bench_gateway.py [--quick]``. The machine is shared, so absolute
figures are noisy; the ratios in the same run are what to compare.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
POINTS = ((1, 600), (16, 2000), (64, 3000))  # (concurrency, requests)
BODY = {"model": "mock-model", "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout_s: float, headers: dict | None = None) -> None:
    import urllib.request

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2).read()
            return
        except Exception:  # noqa: BLE001 — not up yet
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up in {timeout_s} s")


# ---------------------------------------------------------------------------------- gateway side
def serve_gateway(port: int, upstream: str, redis_url: str, key_file: str, publisher=None) -> None:
    """The gateway process: our app with a bench factory (see module docstring).

    ``publisher``: where usage events go (default: an in-memory list, bounded by the bench's request
    count; the load run passes one that only counts, so a long run measures the gateway's memory).
    """
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import uvicorn

    from ig3.events import MemoryEventPublisher
    from ig3.identity.apikeys import ApiKeyService, MemoryApiKeyStore
    from ig3.identity.authorizer import Authorizer
    from ig3.llm.asgi import LlmApp
    from ig3.llm.config import parse_config
    from ig3.llm.edge import StaticCatalogue
    from ig3.llm.gateway import Gateway, Limits
    from ig3.llm.redisguard import RedisGuard
    from ig3.llm.usage import UsageRecorder
    from ig3.llm.wiring import AuthCache

    keys = ApiKeyService(MemoryApiKeyStore())
    key, _ = keys.create("0x" + "b" * 40, name="bench", scopes=["llm"], caller_scopes=frozenset({"*"}))
    pathlib.Path(key_file).write_text(key)
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"

    class _NoTokens:  # the bench uses API keys only
        def verify(self, token: str):  # pragma: no cover
            raise RuntimeError("no JWTs in the bench")

    async def factory():
        cfg = parse_config({"model_list": [{"model_name": "mock-model", "litellm_params": {
            "model": "openai/mock-model", "api_base": upstream, "api_key": "sk-upstream"}}]})
        redis = RedisGuard(redis_url, timeout_s=0.2)
        usage = UsageRecorder(publisher if publisher is not None else MemoryEventPublisher(), interval_s=0.5)
        gw = Gateway(config=cfg, authorize=AuthCache(Authorizer(_NoTokens(), keys).authorize), redis=redis,
                     catalogue=StaticCatalogue(), usage=usage, key_prefix=prefix,
                     limits=Limits(key_rpm=10_000_000, key_tpm=10_000_000_000, wallet_rpm=10_000_000,
                                   wallet_tpm=10_000_000_000))
        return gw, [usage.close, redis.close, gw.upstreams.close]

    run = lambda: uvicorn.run(LlmApp(factory), host="127.0.0.1", port=port, http="httptools",  # noqa: E731
                              loop="uvloop", log_level="warning", access_log=False, lifespan="on")
    profile_to = os.environ.get("BENCH_GATEWAY_PROFILE")  # a path: cProfile the gateway process
    if not profile_to:
        run()
        return
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    try:
        run()
    finally:
        prof.disable()
        prof.dump_stats(profile_to)


# ------------------------------------------------------------------------------------ load side
async def _load(url: str, headers: dict, concurrency: int, n: int) -> dict:
    import aiohttp
    import orjson

    payload = orjson.dumps(BODY)
    lat: list[float] = []
    errors = 0
    counter = iter(range(n))
    conn = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def worker() -> None:
            nonlocal errors
            for _ in counter:
                t = time.perf_counter()
                async with session.post(url, data=payload, headers=headers) as r:
                    await r.read()
                    ok = r.status == 200
                lat.append((time.perf_counter() - t) * 1000)
                errors += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat.sort()
    return {"p50_ms": lat[len(lat) // 2], "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "mean_ms": statistics.fmean(lat), "rps": len(lat) / wall, "errors": errors, "n": len(lat)}


def _proc_cpu(pid: int) -> float:
    import psutil

    p = psutil.Process(pid)
    t = p.cpu_times()
    return t.user + t.system + sum((c.cpu_times().user + c.cpu_times().system) for c in p.children(recursive=True))


def run_target(name: str, url: str, headers: dict, pid: int | None, points) -> dict:
    asyncio.run(_load(url, headers, 8, 300))  # warm-up: pools, caches, JIT-less but lazy paths
    out = {}
    for c, n in points:
        cpu0 = _proc_cpu(pid) if pid else None
        res = asyncio.run(_load(url, headers, c, n))
        if pid:
            res["cpu_ms_per_req"] = (_proc_cpu(pid) - cpu0) * 1000 / res["n"]
        out[c] = res
    return out


def import_time_ms() -> dict:
    code = ("import time,sys; t=time.perf_counter(); c=time.process_time(); import ig3_functions.llm.app, "
            "ig3.llm.gateway; print(json.dumps({'wall_ms': (time.perf_counter()-t)*1000, "
            "'cpu_ms': (time.process_time()-c)*1000, 'litellm_loaded': 'litellm' in sys.modules}))")
    runs = [json.loads(subprocess.check_output([PY, "-c", "import json;" + code], cwd=ROOT)) for _ in range(3)]
    best = min(runs, key=lambda r: r["wall_ms"])
    return best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer requests per point")
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--serve-gateway", nargs=4, metavar=("PORT", "UPSTREAM", "REDIS", "KEYFILE"))
    args = ap.parse_args([] if argv is None else argv)  # called by a runner: defaults, not its argv
    if args.serve_gateway:
        port, upstream, redis_url, key_file = args.serve_gateway
        serve_gateway(int(port), upstream, redis_url, key_file)
        return {}
    points = tuple((c, max(200, n // 4)) for c, n in POINTS) if args.quick else POINTS
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "POWERTOOLS_TRACE_DISABLED": "true",
           "PYTHONPATH": str(ROOT)}
    procs: list[subprocess.Popen] = []
    tmp = tempfile.mkdtemp(prefix="bench-gw-")
    try:
        mport, gport, lport = _free_port(), _free_port(), _free_port()
        mock = subprocess.Popen([PY, str(HERE / "llm_mock_backend.py"), "--port", str(mport)], env=env,
                                stdout=subprocess.DEVNULL)
        procs.append(mock)
        upstream = f"http://127.0.0.1:{mport}/v1"
        _wait_http(upstream + "/models", 30)
        key_file = os.path.join(tmp, "key")
        gw = subprocess.Popen([PY, str(HERE / "bench_gateway.py"), "--serve-gateway", str(gport), upstream, redis_url,
                               key_file], env=env)
        procs.append(gw)
        _wait_http(f"http://127.0.0.1:{gport}/health", 60)
        key = pathlib.Path(key_file).read_text()
        targets = {"direct": (upstream + "/chat/completions", {"Authorization": "Bearer sk-upstream",
                                                               "Content-Type": "application/json"}, mock.pid),
                   "ig3": (f"http://127.0.0.1:{gport}/v1/chat/completions",
                           {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}, gw.pid)}
        if not args.no_litellm:
            sys.path.insert(0, str(HERE))
            from litellm_proxy_env import ensure

            lpy = ensure()
            cfg = os.path.join(tmp, "litellm.yaml")
            pathlib.Path(cfg).write_text(json.dumps({
                "model_list": [{"model_name": "mock-model", "litellm_params": {
                    "model": "openai/mock-model", "api_base": upstream, "api_key": "sk-upstream"}}],
                "general_settings": {"master_key": "sk-bench"},
                "litellm_settings": {"telemetry": False, "drop_params": True}}))
            lit = subprocess.Popen([str(lpy.parent / "litellm"), "--config", cfg, "--port", str(lport),
                                    "--host", "127.0.0.1", "--num_workers", "1"],
                                   env={**env, "PYTHONPATH": ""}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(lit)
            _wait_http(f"http://127.0.0.1:{lport}/health/liveliness", 240)
            targets["litellm"] = (f"http://127.0.0.1:{lport}/v1/chat/completions",
                                  {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}, lit.pid)
        results = {name: run_target(name, url, h, pid, points) for name, (url, h, pid) in targets.items()}
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

    imp = import_time_ms()
    figures: dict = {"import": imp, "points": {}}
    print(f"\nLLM gateway benchmark (non-streaming chat, zero-latency upstream; ms)\n")
    print(f"{'c':>3} {'target':>8} {'p50':>8} {'p99':>8} {'+p50':>8} {'+p99':>8} {'req/s':>8} {'cpu/req':>8} err")
    for c, _ in points:
        base = results["direct"][c]
        for name in results:
            r = results[name][c]
            add50, add99 = r["p50_ms"] - base["p50_ms"], r["p99_ms"] - base["p99_ms"]
            figures["points"].setdefault(c, {})[name] = {**r, "added_p50_ms": add50, "added_p99_ms": add99}
            cpu = f"{r['cpu_ms_per_req']:.3f}" if "cpu_ms_per_req" in r else "-"
            print(f"{c:>3} {name:>8} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {add50:8.2f} {add99:8.2f} "
                  f"{r['rps']:8.0f} {cpu:>8} {r['errors']}")
    if "litellm" in results:
        print("\nratios ig3 / litellm (added latency; lower is better):")
        for c, _ in points:
            p = figures["points"][c]
            r50 = p["ig3"]["added_p50_ms"] / max(p["litellm"]["added_p50_ms"], 1e-9)
            r99 = p["ig3"]["added_p99_ms"] / max(p["litellm"]["added_p99_ms"], 1e-9)
            figures["points"][c]["ratio_added_p50"], figures["points"][c]["ratio_added_p99"] = r50, r99
            print(f"  c={c:<3} p50 {r50:.3f}  p99 {r99:.3f}")
    print(f"\nimport ig3_functions.llm.app: {imp['wall_ms']:.0f} ms wall, {imp['cpu_ms']:.0f} ms CPU, "
          f"litellm loaded: {imp['litellm_loaded']}")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
