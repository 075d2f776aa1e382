"""Builds the LLM gateway from the environment (once per process, at ASGI start-up).

Environment (same locally and in AWS):
- ``IG3_LLM_CONFIG`` / ``IG3_LLM_CONFIG_JSON``: the model_list config (``ig3.llm.config``).
- ``REDIS_URL``; ``IG3_LLM_REDIS_TIMEOUT_MS`` (50) hot-path timeout; ``IG3_LLM_REDIS_PREFIX`` ("ig3:llm:").
- ``IG3_LLM_CACHE_TTL_S`` (3600); ``IG3_LLM_KEY_RPM|TPM``, ``IG3_LLM_WALLET_RPM|TPM`` default limits.
- ``IG3_LLM_EDGE``: ``on`` (default) wires the AI gateway's TaskService, the scheduler's live
  catalogue and the MQTT stream hub (``MQTT_URL``); ``off`` serves the cloud only.
- ``IG3_LLM_EDGE_DEADLINE_S`` (60); ``IG3_EVENT_BUS`` for usage events.
- Billing (``ig3.llm.spend``): when the billing tables are configured (``IG3_TABLE_ACCOUNTS``, ...)
  and ``IG3_LLM_BILLING`` is not ``off``, every cloud request reserves its worst-case cost before
  the upstream call (402 when the wallet cannot cover it). ``IG3_LLM_LEASE_FACTOR`` (8 requests'
  worth per lease), ``IG3_LLM_LEASE_MAX`` (50,000,000 micro-credits), ``IG3_LLM_LEASE_USE_S`` (60),
  ``IG3_LLM_HOLD_TTL_S`` (900), ``IG3_LLM_LEASE_IDLE_S`` (10), ``IG3_LLM_HOLD_DEFAULT_TOKENS``
  (4096: the output a request without ``max_tokens`` reserves; charges never exceed a reservation).
- ``IG3_LLM_PRELOAD_LITELLM=1``: import LiteLLM at start-up when the config has non-OpenAI providers
  (default: on the first request that needs it, in a worker thread).
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from ig3 import config as ig3_config
from ig3.llm.config import load_config
from ig3.llm.edge import LiveCatalogue, MqttStreamHub, StaticCatalogue, TaskServiceEdgeBackend
from ig3.llm.gateway import Gateway, Limits
from ig3.llm.redisguard import CircuitBreaker, RedisGuard
from ig3.llm.usage import UsageRecorder


class AuthCache:
    """``authorize`` results by exact credential for a few seconds (the identity module's own
    API-key cache bound), so a warm request does no thread hop; misses run in a worker thread
    because the first sight of a key may read DynamoDB/Secrets Manager (blocking boto3)."""

    def __init__(self, authorize: Callable[[str | None, str], Any], *, ttl_s: float = 5.0,
                 route_auth: str = "user", max_entries: int = 50_000):
        self._authorize = authorize
        self._ttl = ttl_s
        self._route_auth = route_auth
        self._max = max_entries
        self._cache: dict[str, tuple[Any, float]] = {}

    async def __call__(self, header: str | None) -> Any:
        key = header or ""
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        principal = await asyncio.to_thread(self._authorize, header, self._route_auth)
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[key] = (principal, now + self._ttl)
        return principal


def _identity_authorize(header: str | None, route_auth: str) -> Any:
    from ig3.identity import authorize

    return authorize(header, route_auth)


def _rag_from_env() -> Any:
    """The chat ``rag`` extension when the collections registry is configured (ig3.rag.wiring)."""
    from ig3.topology import table_env

    if not os.environ.get(table_env("rag_collections")):
        return None
    from ig3.rag.chat import ChatRetriever
    from ig3.rag.wiring import collections_service

    return ChatRetriever(collections_service)


def _spend_from_env(redis: RedisGuard, prefix: str) -> Any:
    """Cloud-request reservations (ig3.llm.spend) when this function declares the billing tables."""
    from ig3.topology import table_env

    if os.environ.get("IG3_LLM_BILLING", "on") == "off" or not os.environ.get(table_env("holds")):
        return None
    from ig3.billing.wiring import billing_service
    from ig3.llm.spend import CloudSpend

    return CloudSpend.from_env(billing_service(), redis, prefix)


async def build_from_env() -> tuple[Gateway, list]:
    env = os.environ.get
    cfg = load_config()
    url = ig3_config.redis_url()
    redis = RedisGuard(url, timeout_s=float(env("IG3_LLM_REDIS_TIMEOUT_MS", "50")) / 1000.0,
                       breaker=CircuitBreaker(failures_to_open=int(env("IG3_LLM_REDIS_FAILURES", "2")),
                                              open_s=float(env("IG3_LLM_REDIS_OPEN_S", "5"))))
    from ig3.events import EventBridgePublisher

    usage = UsageRecorder(EventBridgePublisher(ig3_config.event_bus()))
    closers: list = [usage.close, redis.close]
    edge = None
    catalogue: Any = StaticCatalogue()
    if env("IG3_LLM_EDGE", "on") != "off":
        from ig3.tasks import wiring as task_wiring

        live = LiveCatalogue(lambda: task_wiring.live_state().catalogue())
        await live.refresh()
        live.start()
        catalogue = live
        hub = MqttStreamHub()
        hub.start()
        edge = TaskServiceEdgeBackend(task_wiring.task_service, hub, url)
        try:  # build the TaskService (boto3 clients) now, not on the first edge request
            await asyncio.to_thread(task_wiring.task_service)
        except Exception as exc:  # noqa: BLE001 — e.g. tables not configured: retried on first use
            from ig3.log import logger

            logger.warning("task service not ready at start-up", extra={"error_type": type(exc).__name__})
        closers += [live.close, edge.close]
        closers.append(lambda: asyncio.to_thread(hub.stop))
    prefix = env("IG3_LLM_REDIS_PREFIX", "ig3:llm:")
    spend = _spend_from_env(redis, prefix)
    if spend is not None:
        closers.insert(closers.index(redis.close), spend.close)  # settles and closes before Redis goes
    gw = Gateway(config=cfg, authorize=AuthCache(_identity_authorize), redis=redis, catalogue=catalogue, usage=usage,
                 edge=edge, limits=Limits.from_env(), key_prefix=prefix,
                 cache_ttl_s=int(env("IG3_LLM_CACHE_TTL_S", "3600")),
                 edge_deadline_s=float(env("IG3_LLM_EDGE_DEADLINE_S", "60")), rag=_rag_from_env(), spend=spend)
    closers.insert(0, gw.upstreams.close)
    if env("IG3_LLM_PRELOAD_LITELLM") == "1" and cfg.needs_litellm():
        await gw.litellm.router()  # pay LiteLLM's import at start-up (before gc.freeze), not on a request
    return gw, closers
