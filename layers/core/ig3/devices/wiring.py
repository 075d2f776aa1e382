"""Builds the registration service from the environment: the real adapters, once per process.

Resources: tables ``devices``, ``device_challenges`` (and ``did_registry`` for the local
resolver), the event bus, IoT Core's control plane (``iot``). Settings: ``IG3_PUBLIC_HOST`` (the
gateway's public authority, bound into every challenge — the same variable and default SIWE uses),
``IG3_PEAQ_CHAIN_ID`` and the resolver's variables (``ig3.did.resolvers.resolver_from_env``),
``IG3_IOT_THING_GROUP`` and ``IG3_IOT_DEVICE_POLICY`` (set by the deployment; see
``ig3.devices.provisioning``), ``IG3_IOT_POLICY_PREFIX`` (local), ``IG3_IOT_ENDPOINT``.
"""

from __future__ import annotations

import os
from functools import lru_cache

from ig3 import config
from ig3.devices.challenges import DynamoChallengeStore
from ig3.devices.provisioning import BotoIotProvisioner
from ig3.devices.service import RegistrationService
from ig3.devices.store import DynamoDeviceStore
from ig3.did.resolvers import configured_chain_id, resolver_from_env
from ig3.events import EventBridgePublisher

PUBLIC_HOST_ENV = "IG3_PUBLIC_HOST"


def public_host() -> str:
    return os.environ.get(PUBLIC_HOST_ENV) or f"127.0.0.1:{os.environ.get('IG3_PORT', '8080')}"


def remove_live_state(thing: str) -> None:
    """The scheduler's live state (Redis ``ig3:live`` keys) forgets the device."""
    from ig3.tasks.wiring import live_state

    live_state().remove(thing)


@lru_cache(maxsize=1)
def registration_service() -> RegistrationService:
    return RegistrationService(
        resolver=resolver_from_env(),
        challenges=DynamoChallengeStore(config.table_name("device_challenges")),
        devices=DynamoDeviceStore(config.table_name("devices")),
        iot=BotoIotProvisioner(),
        events=EventBridgePublisher(config.event_bus()),
        chain_id=configured_chain_id(),
        remove_live_state=remove_live_state,
    )


def reset() -> None:
    """Forget the cached service (tests that change the environment)."""
    registration_service.cache_clear()
