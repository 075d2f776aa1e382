"""Adapters: reputations and the audit budget in Redis, the audit queue on SQS.

Reputation state is tiny and hot (read on every completed edge task, written on every signal),
so it lives in Redis next to the scheduler's live state, under its own keys that never expire
with the device's heartbeat. Per device, all keys share one hash tag (``{rep:<thing>}``) so the
optimistic transaction (WATCH/MULTI) that applies a signal is legal on Redis Cluster:
- ``{rep:T}`` the state (JSON), ``{rep:T}:h`` the last ``HISTORY`` signals with evidence,
- ``{rep:T}:k:<key>`` marks a signal applied (at-least-once delivery applies it once; kept 30 days).
``rep:quarantine`` (a sorted set: thing -> quarantined until) is what dispatch excludes and what the
operator endpoint lists.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ig3.audit import reputation as rep

HISTORY = 100
KEY_TTL_S = 30 * 86400


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class RedisReputationStore:
    def __init__(self, redis: Any, prefix: str = "ig3:"):
        self.redis = redis
        self.p = prefix

    def _key(self, thing: str) -> str:
        return f"{self.p}{{rep:{thing}}}"

    def get(self, thing: str) -> rep.ReputationState:
        raw = self.redis.get(self._key(thing))
        return rep.ReputationState.from_dict(orjson.loads(raw)) if raw else rep.ReputationState()

    def apply(
        self,
        thing: str,
        signal: rep.Signal,
        *,
        now: float,
        idempotency_key: str,
        policy: rep.ReputationPolicy,
        evidence: dict[str, Any],
        sample: tuple[int, float] | None = None,
    ) -> tuple[rep.ReputationState, str | None, bool]:
        import redis as redis_lib

        key = self._key(thing)
        mark = f"{key}:k:{idempotency_key}"
        while True:
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(key, mark)
                    raw = pipe.get(key)
                    state = rep.ReputationState.from_dict(orjson.loads(raw)) if raw else rep.ReputationState()
                    if pipe.exists(mark):
                        return state, None, False
                    new, transition = rep.apply(
                        state, signal, now, policy, reason=evidence.get("reason"), sample=sample
                    )
                    entry = {
                        **evidence,
                        "signal": signal.value,
                        "at": now,
                        "score": round(rep.score(new, policy), 4),
                        "standing": new.standing.value,
                    }
                    if transition:
                        entry["transition"] = transition
                    pipe.multi()
                    pipe.set(key, orjson.dumps(new.as_dict()))
                    pipe.set(mark, b"1", ex=KEY_TTL_S)
                    pipe.lpush(key + ":h", orjson.dumps(entry))
                    pipe.ltrim(key + ":h", 0, HISTORY - 1)
                    pipe.execute()
                    return new, transition, True
                except redis_lib.WatchError:
                    continue

    def history(self, thing: str, limit: int = 20) -> list[dict[str, Any]]:
        return [orjson.loads(x) for x in self.redis.lrange(self._key(thing) + ":h", 0, max(0, limit - 1))]

    def set_quarantined(self, thing: str, until: float | None) -> None:
        if until is None:
            self.redis.zrem(self.p + "rep:quarantine", thing)
        else:
            self.redis.zadd(self.p + "rep:quarantine", {thing: until})

    def quarantined(self) -> list[str]:
        """Devices quarantined or on probation after a quarantine (listed until reinstated)."""
        return [_s(t) for t in self.redis.zrange(self.p + "rep:quarantine", 0, -1)]

    def excluded(self, now: float | None = None) -> list[str]:
        """Devices that must get no new work now (cool-off not over)."""
        now = time.time() if now is None else now
        return [_s(t) for t in self.redis.zrangebyscore(self.p + "rep:quarantine", f"({now!r}", "+inf")]


class RedisAuditBudget:
    """The network's audit budget: ``limit`` tokens per UTC day (integers; over-spend refunded at once)."""

    def __init__(self, redis: Any, limit_tokens_per_day: int, prefix: str = "ig3:", clock=time.time):
        self.redis = redis
        self.limit = int(limit_tokens_per_day)
        self.p = prefix
        self.clock = clock

    def _key(self) -> str:
        return f"{self.p}audit:budget:{int(self.clock() // 86400)}"

    def try_spend(self, tokens: int, key: str | None = None) -> bool:
        """Charge ``tokens`` unless it would exceed today's limit; once per ``key`` (redelivered intake)."""
        tokens = max(0, int(tokens))
        if key is not None and not self.redis.set(f"{self.p}audit:paid:{key}", b"1", nx=True, ex=2 * 86400):
            return True  # already paid for this audit
        day = self._key()
        pipe = self.redis.pipeline(transaction=True)
        pipe.incrby(day, tokens)
        pipe.expire(day, 2 * 86400)
        spent, _ = pipe.execute()
        if int(spent) > self.limit:
            self.redis.decrby(day, tokens)
            if key is not None:
                self.redis.delete(f"{self.p}audit:paid:{key}")
            return False
        return True

    def spent(self) -> int:
        return int(self.redis.get(self._key()) or 0)


class SqsAuditQueue:
    def __init__(self, queue_url: str, client: Any | None = None):
        self.queue_url = queue_url
        self._client = client

    def send_audit(self, job: Any) -> None:
        if self._client is None:
            from ig3.aws import client

            self._client = client("sqs")
        self._client.send_message(QueueUrl=self.queue_url, MessageBody=job.model_dump_json())
