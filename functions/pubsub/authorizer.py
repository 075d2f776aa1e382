"""pubsub_authorizer function: the IoT Core custom authorizer for clients' MQTT (over WebSocket).

Same credentials as the HTTP API (JWT or API key, checked by ``ig3.identity.authorize``); the
policy allows subscribing to ``ig3/v1/network/*`` and to the stream of each task the client named
and owns (``ig3.pubsub.authz``). Task ownership is read from the tasks table (one consistent GetItem per
named task).
"""
from __future__ import annotations

import os
from functools import lru_cache

from ig3.observability import logger
from ig3.pubsub.authz import authorize_subscription


@lru_cache(maxsize=1)
def _store():
    from ig3 import config
    from ig3.tasks.store import DynamoTaskStore

    return DynamoTaskStore(config.table_name("tasks"))


def task_owner(task_id: str) -> str | None:
    task = _store().get(task_id)
    return task.account if task is not None else None


def handler(event, context):
    from ig3.identity import authorize

    arn = getattr(context, "invoked_function_arn", "") or ""
    parts = arn.split(":")
    region = parts[3] if len(parts) > 4 and parts[3] else os.environ.get("AWS_REGION", "us-east-1")
    account = parts[4] if len(parts) > 4 and parts[4] else "*"
    out = authorize_subscription(event, authorize=authorize, task_owner=task_owner, region=region, account=account)
    logger.info("mqtt client authorization", extra={"authenticated": out["isAuthenticated"]})
    return out
