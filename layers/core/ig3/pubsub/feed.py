"""The network feed: apply a batch of events, then publish the summary at most once a second.

Runs in the ``pubsub`` function (SQS ``network`` queue, batched; plus a schedule so a quiet network
still gets a keep-alive summary and offline devices age out on screen). Publishing goes to IoT Core
(``ig3/v1/network/summary``), where MQTT clients subscribe; the local front bridges the same topic
to browsers as Server-Sent Events.

Cadence: the lock (``claim_publish``) lets one summary a second out. A batch that loses the race
leaves the change marked dirty and schedules a *tick*: a message on its own queue delayed by one
second (at most one pending, ``SET NX``). The tick's invocation publishes the pending change, so the
last change of a burst is never left waiting for the keep-alive schedule, and no invocation ever
sleeps on the lock (a sleeping function holds a concurrency slot and is billed for it).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ig3.observability import logger
from ig3.pubsub.aggregate import NetworkAggregates, parse_eventbridge, summarize
from ig3.pubsub.authz import NETWORK_SUMMARY_TOPIC

PUBLISH_PERIOD_MS = 1000
TICK_DELAY_S = 1
TICK_BODY = b'{"ig3":"pubsub-tick"}'
PREFIX_ENV = "IG3_PUBSUB_PREFIX"


def is_tick(record: Mapping[str, Any]) -> bool:
    body = record.get("body", "")
    return (body.encode() if isinstance(body, str) else body) == TICK_BODY


class NetworkFeed:
    def __init__(self, aggregates: NetworkAggregates, live: Any, publish: Callable[[str, bytes], None], *,
                 schedule_tick: Callable[[int], None] | None = None,
                 dlq_depths: Callable[[], Mapping[str, int | None]] | None = None,
                 clock: Callable[[], float] = time.time):
        self.aggregates, self.live, self._publish = aggregates, live, publish
        self._schedule_tick = schedule_tick
        self._dlq_depths = dlq_depths or (lambda: {})
        self._clock = clock

    def handle_records(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """An SQS batch: malformed or foreign records are dropped (nothing to retry), the rest applied
        atomically per event; a Redis failure fails the batch (SQS redelivers, dedupe makes it safe)."""
        ticks = [r for r in records if is_tick(r)]
        if ticks:
            self.aggregates.tick_consumed()
        events = [e for e in (parse_eventbridge(r.get("body", "")) for r in records if not is_tick(r)) if e is not None]
        applied = self.aggregates.apply(events)
        published = self.publish_if_due()
        return {"batchItemFailures": [], "applied": applied, "published": published}

    def tick(self) -> bool:
        """Scheduled keep-alive: publish even if nothing changed (devices age out by TTL)."""
        if self.aggregates.claim_publish(PUBLISH_PERIOD_MS):
            self.aggregates.take_dirty()
            self.publish_now()
            return True
        return False

    def publish_if_due(self) -> bool:
        """Publish now if the period allows and something changed; otherwise make sure a tick will."""
        if not self.aggregates.is_dirty():
            return False
        if self.aggregates.claim_publish(PUBLISH_PERIOD_MS):
            if self.aggregates.take_dirty():
                self.publish_now()
                return True
            return False
        if self._schedule_tick is not None and self.aggregates.claim_tick(TICK_DELAY_S * 1000 * 3):
            self._schedule_tick(TICK_DELAY_S)
        return False

    def publish_now(self) -> dict[str, Any]:
        try:
            dlq = dict(self._dlq_depths())
        except Exception as exc:  # noqa: BLE001 — a failed depth read must not stop the summary
            logger.warning("dlq depth read failed", extra={"error_type": type(exc).__name__})
            dlq = {}
        summary = summarize(self.aggregates, self.live, self._clock(), dlq=dlq)
        self._publish(NETWORK_SUMMARY_TOPIC, orjson.dumps(summary))
        return summary


def sqs_tick_sender(sqs: Any, queue_url: str) -> Callable[[int], None]:
    def send(delay_s: int) -> None:
        sqs.send_message(QueueUrl=queue_url, MessageBody=TICK_BODY.decode(), DelaySeconds=delay_s)

    return send


DLQ_REFRESH_S = 5.0


def sqs_dlq_depths(sqs: Any, env: Mapping[str, str] | None = None, *, refresh_s: float = DLQ_REFRESH_S,
                   clock: Callable[[], float] = time.monotonic) -> Callable[[], dict[str, int | None]]:
    """Messages waiting in each dead-letter queue named in the environment (``IG3_QUEUE_<Q>_DLQ_URL``).

    Read at most every ``refresh_s`` per warm container (one GetQueueAttributes per DLQ): a DLQ's
    depth is a slow signal, and a summary a second must not cost a call per queue each time.
    """
    env = os.environ if env is None else env
    urls = {k[len("IG3_QUEUE_"):-len("_DLQ_URL")].lower(): v for k, v in env.items()
            if k.startswith("IG3_QUEUE_") and k.endswith("_DLQ_URL") and v}
    cache: dict[str, Any] = {"at": None, "value": {}}

    def cached() -> dict[str, int | None]:
        now = clock()
        if cache["at"] is None or now - cache["at"] >= refresh_s:
            cache["value"], cache["at"] = read(), now
        return dict(cache["value"])

    def read() -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for name, url in sorted(urls.items()):
            try:
                attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
                out[name] = int(attrs["Attributes"]["ApproximateNumberOfMessages"])
            except Exception:  # noqa: BLE001 — unknown, shown as such
                out[name] = None
        return out

    return cached
