"""The scheduled handlers: billing_sweep releases expired holds; deposits reads its config from env."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import pytest
from ig3.billing.deposits import DepositConfig
from ig3.local.lambda_runtime import LambdaContext

pytestmark = pytest.mark.integration


def test_sweep_handler_releases_expired_holds(aws_env):
    from ig3.billing.wiring import billing_service
    from ig3_functions.billing.sweep import handler

    billing_service.cache_clear()
    svc = billing_service()
    a = "0x" + uuid.uuid4().hex
    svc.credit(a, 1_000, f"dep-{a}")
    svc.hold(a, f"{a}-short", 600, 0.05)
    svc.hold(a, f"{a}-long", 300, 600)
    time.sleep(0.1)
    out = handler(
        {"source": "aws.events", "detail-type": "Scheduled Event"},
        LambdaContext(function_name="billing_sweep", aws_request_id=uuid.uuid4().hex),
    )
    assert out["expired"] >= 1
    assert svc.store.get_hold(f"{a}-short").state == "expired"
    assert svc.store.get_hold(f"{a}-long").state == "active"
    assert svc.balance(a).available == 700


def test_deposit_config_from_env(monkeypatch):
    monkeypatch.setenv("IG3_TREASURY_ADDRESS", "0x" + "Ab" * 20)
    monkeypatch.setenv("IG3_DEPOSIT_CONFIRMATIONS", "6")
    monkeypatch.setenv("IG3_DEPOSIT_NATIVE_RATE", "0.000000000001")
    monkeypatch.setenv("IG3_DEPOSIT_TOKENS", '{"0x' + "CD" * 20 + '": "0.5"}')
    cfg = DepositConfig.from_env()
    assert cfg.treasury == "0x" + "ab" * 20 and cfg.confirmations == 6
    assert cfg.native_rate == Decimal("1E-12") and cfg.token_rates == {"0x" + "cd" * 20: Decimal("0.5")}
    monkeypatch.setenv("IG3_DEPOSIT_CONFIRMATIONS", "0")
    with pytest.raises(ValueError, match="confirmations"):
        DepositConfig.from_env()
    monkeypatch.setenv("IG3_DEPOSIT_CONFIRMATIONS", "3")
    monkeypatch.setenv("IG3_TREASURY_ADDRESS", "not-an-address")
    with pytest.raises(ValueError, match="treasury"):
        DepositConfig.from_env()


def test_deposits_handler_is_a_no_op_without_a_configured_chain(monkeypatch):
    from ig3_functions.deposits.handler import handler

    monkeypatch.delenv("IG3_CHAIN_RPC_URL", raising=False)
    out = handler({}, LambdaContext(function_name="deposits", aws_request_id=uuid.uuid4().hex))
    assert "IG3_CHAIN_RPC_URL" in out["disabled"]
