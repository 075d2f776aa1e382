"""pubsub function: network events (EventBridge rule -> SQS ``network``, batched) -> aggregates in
Redis -> at most one network summary a second on IoT ``ig3/v1/network/summary``; a change that
arrives inside the second sends itself a delayed tick on the same queue; a schedule publishes a
keep-alive summary when the network is quiet."""
from __future__ import annotations

from functools import lru_cache

from ig3.observability import logger, metrics, tracer


@lru_cache(maxsize=1)
def _feed():
    import os

    from ig3.aws import client
    from ig3.iot import IotDataPublisher
    from ig3.pubsub.aggregate import NetworkAggregates
    from ig3 import config
    from ig3.pubsub.feed import PREFIX_ENV, NetworkFeed, sqs_dlq_depths, sqs_tick_sender
    from ig3.redis_client import get_redis
    from ig3.tasks.wiring import live_state

    iot = IotDataPublisher()
    sqs = client("sqs")
    return NetworkFeed(NetworkAggregates(get_redis(), prefix=os.environ.get(PREFIX_ENV) or "ig3:"), live_state(),
                       lambda topic, payload: iot.publish(topic, payload, qos=0),
                       schedule_tick=sqs_tick_sender(sqs, config.queue_url("network")),
                       dlq_depths=sqs_dlq_depths(sqs))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    if "Records" in event:
        out = _feed().handle_records(event["Records"])
        metrics.add_metric(name="NetworkEventsApplied", unit="Count", value=out.pop("applied"))
        out.pop("published")
        return out
    return {"published": _feed().tick()}  # the schedule's keep-alive
