"""Builds the billing service from the environment: the real adapters, once per process."""

from __future__ import annotations

from functools import lru_cache

from ig3.billing.dynamo import DynamoBillingStore
from ig3.billing.pricing import price_book
from ig3.billing.service import BillingService


@lru_cache(maxsize=1)
def billing_service() -> BillingService:
    return BillingService(DynamoBillingStore.from_env(), price_book())
