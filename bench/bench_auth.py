"""Cost of ``authorize()`` per request — the identity check every API and LLM request pays.

Cases (each call timed on its own with ``perf_counter_ns``; p50 / p99 / mean in microseconds):
- ``jwt (repeat)``: the same access token again and again — the steady state, since a client
  reuses its token for its whole lifetime; served by the verified-token cache.
- ``jwt (first sight)``: a different, never-seen token per call — full ES256 verification
  (base64url + JSON + ECDSA P-256 via OpenSSL + claim checks).
- ``api key (local cache)``: an API key within the in-process cache TTL: SHA-256 + dict lookup.
- ``api key (redis)``: in-process cache disabled: one GET on the real Redis per call
  (the path every container takes once per key per ``IG3_APIKEY_LOCAL_TTL_S``).
The signing keys are generated in-process and the key store is in memory: this measures our
code and the crypto, not Secrets Manager or DynamoDB, which warm paths never touch.

Run: ``.venv/bin/python bench/bench_auth.py [--n 5000]``. The machine is shared: figures are noisy.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

N_DEFAULT = 5000


def _figures(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)
    return {"p50_us": s[len(s) // 2] / 1000, "p99_us": s[int(len(s) * 0.99) - 1] / 1000,
            "mean_us": statistics.fmean(s) / 1000, "n": len(s)}


def _time_calls(fn, args: list) -> list[int]:
    out = []
    clock = time.perf_counter_ns
    for a in args:
        t0 = clock()
        fn(a)
        out.append(clock() - t0)
    return out


def main(n: int = N_DEFAULT) -> dict[str, dict[str, float]]:
    from ig3.identity.apikeys import ApiKeyService, MemoryApiKeyStore
    from ig3.identity.authorizer import Authorizer
    from ig3.identity.tokens import StaticKeySource, TokenService, parse_keyset, rotated_secret

    keys = StaticKeySource(parse_keyset(rotated_secret(None)))
    tokens = TokenService(keys, issuer="https://bench", audience="ig3-api", cache_size=4 * n)
    store = MemoryApiKeyStore()
    local = ApiKeyService(store)
    owner = "0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B"
    api_key, _ = local.create(owner, name="bench", scopes=["llm"], caller_scopes=frozenset({"*"}), rpm_limit=600)
    auth = Authorizer(tokens, local)

    one_token, _ = tokens.issue(owner, "wallet", ["*"], "standard")
    fresh_tokens = [tokens.issue(owner, "wallet", ["*"], "standard")[0] for _ in range(n)]
    for _ in range(200):  # warm-up
        auth.authorize(one_token, "user")
        auth.authorize(api_key, "user")

    results: dict[str, dict[str, float]] = {}
    results["jwt (repeat)"] = _figures(_time_calls(lambda t: auth.authorize(t, "user"), [one_token] * n))
    results["jwt (first sight)"] = _figures(_time_calls(lambda t: auth.authorize(t, "user"), fresh_tokens))
    results["api key (local cache)"] = _figures(_time_calls(lambda k: auth.authorize(k, "user"), [api_key] * n))

    try:
        import redis

        r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), socket_timeout=1)
        r.ping()
    except Exception as exc:  # noqa: BLE001
        print(f"(redis unavailable, skipping the redis case: {type(exc).__name__})")
    else:
        prefix = f"bench:{uuid.uuid4().hex[:8]}:apikey:"
        via_redis = ApiKeyService(store, redis=r, redis_prefix=prefix, local_ttl_s=0)
        auth_redis = Authorizer(tokens, via_redis)
        auth_redis.authorize(api_key, "user")  # fills Redis from the store once
        try:
            results["api key (redis)"] = _figures(_time_calls(lambda k: auth_redis.authorize(k, "user"),
                                                              [api_key] * max(1, n // 5)))
        finally:
            keys_left = list(r.scan_iter(match=prefix + "*"))
            if keys_left:
                r.delete(*keys_left)

    print(f"{'authorize() per call':<24}{'p50 µs':>10}{'p99 µs':>10}{'mean µs':>10}{'n':>8}")
    for name, f in results.items():
        print(f"{name:<24}{f['p50_us']:>10.1f}{f['p99_us']:>10.1f}{f['mean_us']:>10.1f}{int(f['n']):>8}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=N_DEFAULT)
    main(parser.parse_args().n)
