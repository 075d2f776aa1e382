"""Fixtures of the scheduler's Redis tests: a client of the real Redis and a LiveState under the
test's own key prefix (never flushed)."""

from __future__ import annotations

import pytest
import redis
from ig3.scheduler import LiveState


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def live(r, redis_prefix):
    return LiveState(r, prefix=redis_prefix, ttl_s=30)
