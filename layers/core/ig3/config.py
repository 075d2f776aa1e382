"""Settings read from the environment (same names locally and in AWS; see ig3.topology)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from ig3.topology import BUS_ENV, REDIS_ENV, queue_env, table_env


def table_name(table: str) -> str:
    return _required(table_env(table))


def queue_url(queue: str) -> str:
    return _required(queue_env(queue))


def event_bus() -> str:
    return os.environ.get(BUS_ENV, "ig3")


def redis_url() -> str:
    return os.environ.get(REDIS_ENV, "redis://127.0.0.1:6379/0")


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"missing environment variable {name}")
    return value


@dataclass(frozen=True)
class DispatchSettings:
    edge_attempts: int = 3  # edge assignments before the cloud fallback
    cloud_attempts: int = 1
    default_deadline_s: float = 60.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0


@lru_cache(maxsize=1)
def dispatch_settings() -> DispatchSettings:
    env = os.environ.get
    return DispatchSettings(
        edge_attempts=int(env("IG3_EDGE_ATTEMPTS", "3")),
        cloud_attempts=int(env("IG3_CLOUD_ATTEMPTS", "1")),
        default_deadline_s=float(env("IG3_DEFAULT_DEADLINE_S", "60")),
        backoff_base_s=float(env("IG3_BACKOFF_BASE_S", "0.5")),
        backoff_max_s=float(env("IG3_BACKOFF_MAX_S", "20")),
    )
