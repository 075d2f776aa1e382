"""Wiring for the Lambda handlers: settings and store once per container; one event loop, one
python-telegram-bot ``Bot`` and one aiohttp session per container, reused by every invocation.

Why reuse: building a ``Bot`` costs ~160 ms of CPU (two httpx clients, each loading the CA bundle
into an SSL context) — a fresh one per update made every webhook answer take that long
(bench/bench_telegram.py). Both clients are bound to the loop that made them, so the loop is kept
too (``run_until_complete`` on it, never ``asyncio.run``). Thread-local: the local cloud runs
several "containers" as threads of one process; in Lambda there is one.
"""
from __future__ import annotations

import asyncio
import functools
import os
import threading
from typing import Any, Awaitable, Callable, TypeVar

from ig3.telegram.settings import QUEUE_ENV, BotSettings, load_settings
from ig3.telegram.store import RedisBotStore

T = TypeVar("T")


@functools.lru_cache(maxsize=1)
def settings() -> BotSettings:
    return load_settings()


@functools.lru_cache(maxsize=1)
def store() -> RedisBotStore:
    from ig3.redis_client import get_redis

    return RedisBotStore(get_redis(), prefix=os.environ.get("IG3_TELEGRAM_REDIS_PREFIX", "ig3:tg:"),
                         memory_messages=settings().memory_messages)


def reset() -> None:
    settings.cache_clear()
    store.cache_clear()


_container = threading.local()


def run_with_clients(work: Callable[[Any, Callable[[str], Any]], Awaitable[T]],
                     bot_settings: BotSettings | None = None) -> T:
    """Run ``work(bot, gateway_for)`` on this container's loop with its long-lived clients."""
    s = bot_settings or settings()
    c = _container
    if getattr(c, "loop", None) is None or c.loop.is_closed():
        c.loop, c.bot, c.session = asyncio.new_event_loop(), None, None

    async def main() -> T:
        import aiohttp
        from telegram import Bot

        from ig3.telegram.gateway import Gateway, wallet_token

        if c.bot is None or c.bot.token != s.bot_token:
            c.bot = Bot(s.bot_token, base_url=f"{s.api_base_url}/bot")
        if c.session is None or c.session.closed:
            c.session = aiohttp.ClientSession()
        return await work(c.bot, lambda wallet: Gateway(s.gateway_url, wallet_token(wallet), c.session))

    return c.loop.run_until_complete(main())


def close_clients() -> None:
    """Close this thread's clients and loop (tests, benchmarks; a Lambda container just ends)."""
    c = _container
    loop = getattr(c, "loop", None)
    if loop is None or loop.is_closed():
        return

    async def close() -> None:
        if c.session is not None:
            await c.session.close()
        if c.bot is not None:
            await c.bot.shutdown()

    loop.run_until_complete(close())
    loop.close()
    c.loop = c.bot = c.session = None


def queue_url() -> str:
    return os.environ[QUEUE_ENV]
