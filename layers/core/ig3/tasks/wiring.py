"""Builds the task services from the environment: the real adapters, once per process."""
from __future__ import annotations

from functools import lru_cache

from ig3 import config
from ig3.events import DeferredEventPublisher, EventBridgePublisher
from ig3.iot import IotDataPublisher
from ig3.redis_client import get_redis
from ig3.tasks.notify import RedisTerminalNotifier
from ig3.tasks.placement import SchedulerPlacer
from ig3.tasks.queue import SqsTaskQueue
from ig3.tasks.service import TaskService
from ig3.tasks.store import DynamoTaskStore


# Key prefix of the live state in Redis; tests and side-by-side stages set their own.
LIVE_PREFIX_ENV = "IG3_LIVE_PREFIX"


@lru_cache(maxsize=1)
def live_state():
    import os

    from ig3.scheduler import LiveState

    return LiveState(get_redis(), prefix=os.environ.get(LIVE_PREFIX_ENV) or "ig3:")


@lru_cache(maxsize=1)
def task_service() -> TaskService:
    import os

    from ig3.scheduler import Scheduler
    from ig3.tasks.cloud import FleetSpeed, RedisCloudClaims, backend_from_env
    from ig3.tasks.queue import SqsCloudQueue
    from ig3.topology import queue_env

    live = live_state()
    iot = IotDataPublisher()
    # A function that declares the "cloud" queue hands cloud work to the cloud worker (the
    # dispatcher; the worker itself runs it); one that does not runs it inline.
    cloud_url = os.environ.get(queue_env("cloud"))
    return TaskService(
        store=DynamoTaskStore(config.table_name("tasks")),
        placer=SchedulerPlacer(Scheduler(live), live, quarantine=_reputation()),
        iot=iot,
        # Only the queues this function declares (its role can send to no other).
        queue=SqsTaskQueue(os.environ.get(queue_env("tasks")), os.environ.get(queue_env("timeouts"))),
        # Events of an SQS batch are published together at its end (ig3.sqs_batch); elsewhere at once.
        events=DeferredEventPublisher(EventBridgePublisher(config.event_bus())),
        notifier=RedisTerminalNotifier(get_redis()),
        verifier=_result_verifier(),
        # The SageMaker fallback when IG3_SAGEMAKER_ENDPOINT (+ its served models) is configured;
        # litellm itself is imported only when a task first goes to the cloud.
        cloud=backend_from_env(stream_publisher=iot, runs_here=not cloud_url),
        cloud_queue=SqsCloudQueue(cloud_url) if cloud_url else None,
        cloud_claims=RedisCloudClaims(get_redis(), prefix=os.environ.get(LIVE_PREFIX_ENV) or "ig3:"),
        fleet_speed=FleetSpeed(live),
        budget=_budget(),
        audit=_audit(),
    )


def _reputation():
    from ig3.audit.wiring import reputation_store

    return reputation_store()


def _audit():
    # Verifiable work (issue #13): reputation signals, quarantine, sampled audits.
    from ig3.audit.wiring import audit_service

    return audit_service()


def _budget():
    from ig3.tasks.billing import BillingBudget

    return BillingBudget(_LazyBilling())


class _LazyBilling:
    """The billing service, built on first use: only functions that submit tasks hold funds (and
    declare the billing tables); the dispatcher, results, timeouts and cloud functions never do
    and must start without those tables' names."""

    def __getattr__(self, name):
        from ig3.billing.wiring import billing_service

        return getattr(billing_service(), name)


def _result_verifier():
    from ig3.tasks.signatures import DeviceSignatureVerifier

    # Results must be signed by the key the device's DID names (ig3.devices.signers), not merely by
    # the key they name themselves (issue #13: answers signed with another key were accepted).
    return DeviceSignatureVerifier(_registered_signers())


def _registered_signers():
    from ig3.devices.signers import RegisteredSigners

    store = None

    def get_record(thing: str):
        nonlocal store
        if store is None:
            from ig3 import config
            from ig3.devices.store import DynamoDeviceStore

            store = DynamoDeviceStore(config.table_name("devices"))
        return store.get(thing)

    return RegisteredSigners(get_record)
