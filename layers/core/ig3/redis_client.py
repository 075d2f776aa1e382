"""One Redis client per process, with short timeouts (a dead Redis must fail fast, never hang)."""
from __future__ import annotations

import threading
from typing import Any

from ig3.config import redis_url

_lock = threading.Lock()
_clients: dict[str, Any] = {}


def get_redis(url: str | None = None) -> Any:
    import redis

    url = url or redis_url()
    with _lock:
        c = _clients.get(url)
        if c is None:
            c = _clients[url] = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0,
                                                     health_check_interval=30)
        return c


def get_blocking_redis(url: str | None = None) -> Any:
    """A client for blocking reads (BLMOVE/BLPOP up to ~30 s): its socket timeout must outlast them."""
    import redis

    url = url or redis_url()
    key = "blocking:" + url
    with _lock:
        c = _clients.get(key)
        if c is None:
            c = _clients[key] = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=35.0)
        return c


def reset() -> None:
    with _lock:
        _clients.clear()
