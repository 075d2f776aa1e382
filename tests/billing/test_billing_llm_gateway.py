"""The LLM gateway's cloud path with billing on: the official openai SDK against the gateway (uvicorn),
real Redis, real identity (API keys in moto), the ledger in moto's DynamoDB, usage events through
moto's EventBridge into SQS and from there into the billing consumer.

- an unfunded wallet gets 402 in OpenAI's error shape, and the upstream is never called;
- many concurrent requests on a small balance: the balance never goes below zero, and once the
  usage events are consumed the ledger holds exactly one entry per served request with exactly
  its price, and the balance is exactly the deposit minus those charges;
- a failed upstream call bills nothing and leaves nothing reserved;
- an API key's budget refuses what it cannot cover (402 ``key_budget_exceeded``).
"""

from __future__ import annotations

import asyncio
import threading

import openai
import orjson
import pytest
from ig3.billing.dynamo import DynamoBillingStore
from ig3.billing.models import UsageRecorded, usage_entry_id
from ig3.billing.pricing import price_book
from ig3.billing.reconcile import reconcile
from ig3.billing.service import BillingService
from ig3.billing.usage import apply_usage

from tests.llm.conftest import UvicornServer, api_keys, mock_upstream, usage_queue  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

MODEL = "cloud-small"


@pytest.fixture
def billed_gateway(
    mock_upstream, redis_url, redis_prefix, api_keys, usage_queue, ddb_serialized  # noqa: F811
):
    from ig3.events import EventBridgePublisher
    from ig3.llm.asgi import LlmApp
    from ig3.llm.config import parse_config
    from ig3.llm.edge import StaticCatalogue
    from ig3.llm.gateway import Gateway, Limits
    from ig3.llm.redisguard import CircuitBreaker, RedisGuard
    from ig3.llm.spend import CloudSpend
    from ig3.llm.usage import UsageRecorder
    from ig3.llm.wiring import AuthCache
    from tests.conftest import free_port

    mock, upstream = mock_upstream
    authorizer, new_key = api_keys
    bus, read_usage = usage_queue
    store = DynamoBillingStore.from_env()
    store._client = ddb_serialized
    billing = BillingService(store, price_book())
    built: dict = {}

    async def factory():
        redis = RedisGuard(redis_url, timeout_s=5.0, breaker=CircuitBreaker(failures_to_open=1000, open_s=1))
        usage = UsageRecorder(EventBridgePublisher(bus), interval_s=0.1)
        spend = CloudSpend(billing, redis, prefix=redis_prefix + "llm:", lease_factor=8, idle_close_s=0.2)
        config = parse_config({"model_list": [
            {"model_name": MODEL, "litellm_params": {"model": "openai/mock-model", "api_base": upstream,
                                                     "api_key": "sk-upstream"}},
            {"model_name": "cloud-broken",
             "litellm_params": {"model": "openai/fail-500", "api_base": upstream}},
        ]})
        limits = Limits(key_rpm=10_000, key_tpm=10**8, wallet_rpm=10_000, wallet_tpm=10**8)
        gw = Gateway(config=config, authorize=AuthCache(authorizer.authorize), redis=redis,
                     catalogue=StaticCatalogue(), usage=usage, key_prefix=redis_prefix + "llm:", spend=spend,
                     limits=limits)
        built.update(gw=gw, spend=spend, loop=asyncio.get_running_loop())
        return gw, [spend.close, usage.close, redis.close, gw.upstreams.close]

    with UvicornServer(LlmApp(factory, freeze_gc=False), free_port()) as server:
        yield server, built, billing, mock, new_key, read_usage


def _client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=60)


def _body(i: int = 0) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"tell me about billing number {i}"}],
            "max_tokens": 50}


def _worst_case(built, body: dict) -> int:
    from ig3.llm.models import ChatCompletionRequest

    req = ChatCompletionRequest.model_validate(body)
    return built["gw"].worst_case("chat", req, req.prompt_text(), MODEL)


def _drain(built) -> None:
    asyncio.run_coroutine_threadsafe(built["spend"].drain(), built["loop"]).result(60)


def _wait_until_nothing_held(built, billing, owner: str, timeout_s: float = 60.0):
    """Idle leases close after ``idle_close_s`` (0.2 s here): wait for it, on a condition."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        asyncio.run_coroutine_threadsafe(built["spend"].close_idle(), built["loop"]).result(60)
        _drain(built)
        bal = billing.balance(owner)
        if bal.held == 0 or time.monotonic() > deadline:
            return bal
        time.sleep(0.1)


def _consume(billing, read_usage, expect: int) -> list[UsageRecorded]:
    events = [UsageRecorded.model_validate(e["detail"]) for e in read_usage(expect, timeout_s=60)]
    assert len(events) == expect
    for ev in events + events[:3]:  # redelivered duplicates change nothing
        apply_usage(billing, ev)
    return events


def test_unfunded_wallet_gets_402_in_openai_shape_and_no_upstream_call(billed_gateway):
    server, built, billing, mock, new_key, read_usage = billed_gateway
    key, owner = new_key()
    before = mock.calls["chat"]
    with pytest.raises(openai.APIStatusError) as exc:
        _client(server, key).chat.completions.create(**_body())
    assert exc.value.status_code == 402
    err = orjson.loads(exc.value.response.content)["error"]
    assert err["code"] == "insufficient_balance" and err["type"] == "insufficient_quota"
    assert str(_worst_case(built, _body())) in err["message"]
    assert mock.calls["chat"] == before  # refused before the upstream call
    billing.credit(owner, _worst_case(built, _body()) - 1, f"seed-{owner}")  # one micro-credit short
    with pytest.raises(openai.APIStatusError) as exc:
        _client(server, key).chat.completions.create(**_body())
    assert exc.value.status_code == 402 and mock.calls["chat"] == before


def test_concurrent_requests_on_a_small_balance_are_billed_exactly(billed_gateway):
    server, built, billing, mock, new_key, read_usage = billed_gateway
    key, owner = new_key()
    worst = _worst_case(built, _body())
    deposit = 4 * worst
    billing.credit(owner, deposit, f"seed-{owner}")
    client = _client(server, key)
    lowest = [deposit]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            b = billing.balance(owner)
            lowest[0] = min(lowest[0], b.available, b.total)

    def call(i: int):
        try:
            return client.chat.completions.with_raw_response.create(**_body(i))
        except openai.APIStatusError as exc:
            return exc

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    results: list = [None] * 24
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, call(i))) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    served = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert all(r.status_code == 402 for r in refused)
    assert len(served) + len(refused) == 24 and len(served) >= 4
    _drain(built)
    _consume(billing, read_usage, len(served))
    stop.set()
    watcher.join(30)
    assert lowest[0] >= 0
    spend = built["spend"]
    charges = {}
    for raw in served:
        u = raw.parse().usage
        charges[raw.headers["x-request-id"]] = spend.cost(MODEL, "chat", u.prompt_tokens, u.completion_tokens)
    for rid, charge in charges.items():
        entry = billing.store.get_entry(usage_entry_id(rid))
        assert entry is not None and entry.amount == -charge
    bal = _wait_until_nothing_held(built, billing, owner)
    assert bal.total == deposit - sum(charges.values())
    assert bal.held == 0 and bal.available == bal.total
    assert [m for m in reconcile(billing.store).mismatches if m.account == owner] == []


def test_failed_upstream_bills_nothing_and_frees_the_reservation(billed_gateway):
    server, built, billing, mock, new_key, read_usage = billed_gateway
    key, owner = new_key()
    body = {**_body(), "model": "cloud-broken"}
    billing.credit(owner, 10 * _worst_case(built, body), f"seed-{owner}")
    with pytest.raises(openai.APIStatusError) as exc:
        _client(server, key).chat.completions.create(**body)
    assert exc.value.status_code >= 500
    _drain(built)
    (ev,) = _consume(billing, read_usage, 1)
    assert ev.status == "failed" and ev.lease
    assert billing.store.get_entry(usage_entry_id(ev.request_id)) is None
    bal = _wait_until_nothing_held(built, billing, owner)
    assert bal.held == 0 and bal.total == bal.available == 10 * _worst_case(built, body)


def test_key_budget_is_enforced_on_cloud_requests(billed_gateway):
    server, built, billing, mock, new_key, read_usage = billed_gateway
    worst = _worst_case(built, _body())
    key, owner = new_key(budget=worst)  # one request's worst case
    billing.credit(owner, 100 * worst, f"seed-{owner}")
    client = _client(server, key)
    first = client.chat.completions.create(**_body())
    assert first.usage.completion_tokens > 0
    _drain(built)
    (ev,) = _consume(billing, read_usage, 1)
    assert ev.key_budget == worst
    # The first request's actual charge now counts against the key: less than a worst case is left.
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(**_body(1))
    assert exc.value.status_code == 402
    assert orjson.loads(exc.value.response.content)["error"]["code"] == "key_budget_exceeded"


def test_the_llm_function_wires_reservations_when_it_has_the_billing_tables(
    aws_env, redis_url, monkeypatch
):
    import json

    from ig3.llm.wiring import build_from_env
    from ig3.topology import TOPOLOGY, table_env

    llm = next(f for f in TOPOLOGY.functions if f.name == "llm")
    assert {"accounts", "ledger", "holds"} <= set(llm.tables)  # its role may hold and read balances
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("IG3_LLM_EDGE", "off")
    params = {"model": "openai/mock-model", "api_base": "http://127.0.0.1:9/v1"}
    monkeypatch.setenv("IG3_LLM_CONFIG_JSON", json.dumps({"model_list": [
        {"model_name": MODEL, "litellm_params": params}]}))

    async def build(billing: str):
        monkeypatch.setenv("IG3_LLM_BILLING", billing)
        gw, closers = await build_from_env()
        for close in closers:
            await close()
        return gw

    assert asyncio.run(build("on")).spend is not None
    assert asyncio.run(build("off")).spend is None
    monkeypatch.setenv("IG3_LLM_BILLING", "on")
    monkeypatch.delenv(table_env("holds"))
    assert asyncio.run(build("on")).spend is None  # a deployment without the tables serves unbilled
