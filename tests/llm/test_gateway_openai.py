"""The official openai SDK against the gateway served by uvicorn: real Redis (through a TCP proxy
we can kill), real identity (API keys in moto), usage events through moto's EventBridge, and a
zero-latency OpenAI-compatible upstream standing in for the cloud model."""
from __future__ import annotations

import time
import uuid

import httpx
import openai
import pytest

from tests.llm.conftest import UvicornServer

pytestmark = pytest.mark.integration


def _config(upstream: str) -> dict:
    return {
        "model_list": [
            {"model_name": "cloud-small", "litellm_params": {"model": "openai/mock-model", "api_base": upstream,
                                                             "api_key": "sk-upstream"},
             "model_info": {"ig3_ttft_ms": 300, "ig3_tokens_per_s": 100}},
            {"model_name": "cloud-embed", "litellm_params": {"model": "openai/mock-embed", "api_base": upstream},
             "model_info": {"mode": "embedding"}},
            {"model_name": "cloud-broken", "litellm_params": {"model": "openai/fail-400", "api_base": upstream}},
            {"model_name": "cloud-cut", "litellm_params": {"model": "openai/cut-stream", "api_base": upstream}},
            # Forced through LiteLLM's Router (what Bedrock/Anthropic/sagemaker_chat deployments take).
            {"model_name": "via-litellm", "litellm_params": {"model": "openai/mock-model", "api_base": upstream,
                                                             "api_key": "sk-upstream"},
             "model_info": {"ig3_via": "litellm"}},
        ],
        "ig3": {"aliases": {"ig3/auto": {"edge": ["smollm2-135m-instruct"], "cloud": "cloud-small"},
                            "ig3/fast": {"edge": ["smollm2-135m-instruct"], "cloud": "cloud-small"}}},
    }


@pytest.fixture
def gateway(mock_upstream, redis_proxy, redis_prefix, api_keys, usage_queue, free_port_factory):
    from ig3.events import EventBridgePublisher
    from ig3.llm.asgi import LlmApp
    from ig3.llm.config import parse_config
    from ig3.llm.edge import StaticCatalogue
    from ig3.llm.gateway import Gateway, Limits
    from ig3.llm.redisguard import CircuitBreaker, RedisGuard
    from ig3.llm.usage import UsageRecorder
    from ig3.llm.wiring import AuthCache

    mock, upstream = mock_upstream
    proxy, proxied_url = redis_proxy
    authorizer, new_key = api_keys
    bus, read_usage = usage_queue
    built: dict = {}

    async def factory():
        redis = RedisGuard(proxied_url, timeout_s=0.2, breaker=CircuitBreaker(failures_to_open=1, open_s=30))
        usage = UsageRecorder(EventBridgePublisher(bus), interval_s=0.1)
        gw = Gateway(config=parse_config(_config(upstream)), authorize=AuthCache(authorizer.authorize), redis=redis,
                     catalogue=StaticCatalogue(), usage=usage, key_prefix=redis_prefix + "llm:",
                     limits=Limits(key_rpm=1000, key_tpm=1_000_000, wallet_rpm=1000, wallet_tpm=1_000_000))
        built["gw"] = gw
        return gw, [usage.close, redis.close, gw.upstreams.close]

    with UvicornServer(LlmApp(factory, freeze_gc=False), free_port_factory()) as server:
        yield server, built, mock, proxy, new_key, read_usage


@pytest.fixture
def free_port_factory():
    from tests.conftest import free_port

    return free_port


def _client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=20)


def test_chat_models_embeddings_and_usage_events(gateway):
    server, built, mock, _, new_key, read_usage = gateway
    key, owner = new_key()
    client = _client(server, key)

    raw = client.chat.completions.with_raw_response.create(
        model="cloud-small", messages=[{"role": "user", "content": "say something nice"}], max_tokens=50)
    chat = raw.parse()
    assert raw.headers["x-ig3-route"] == "cloud"
    assert raw.headers["x-ig3-route-reason"] == "cloud model requested"
    assert raw.headers["x-ig3-cache"] == "skip"  # no temperature: OpenAI's default 1.0 is not deterministic
    assert chat.model == "cloud-small"
    assert chat.choices[0].message.content
    assert chat.usage.prompt_tokens == 3 and chat.usage.completion_tokens == len(chat.choices[0].message.content.split())
    assert mock.last_body["model"] == "mock-model"  # the upstream's own name went upstream

    models = {m.id for m in client.models.list()}
    assert {"ig3/auto", "ig3/fast", "cloud-small", "cloud-embed"} <= models

    emb = client.embeddings.create(model="cloud-embed", input=["one two", "three"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    assert emb.usage.prompt_tokens == 3

    comp = client.completions.create(model="cloud-small", prompt="once upon a time", max_tokens=5)
    assert comp.choices[0].text and comp.usage.completion_tokens <= 5

    events = read_usage(3)
    details = sorted((e["detail"] for e in events), key=lambda d: d["kind"])
    assert [d["kind"] for d in details] == ["chat", "completion", "embedding"]
    chat_event = details[0]
    assert chat_event["account"] == owner and chat_event["route"] == "cloud" and chat_event["status"] == "completed"
    from ig3.billing.models import UsageRecorded

    for d in details:
        UsageRecorded.model_validate(d)  # the billing consumer's contract
    assert chat_event["prompt_tokens"] == chat.usage.prompt_tokens
    assert chat_event["completion_tokens"] == chat.usage.completion_tokens
    assert chat_event["key_id"] and chat_event["event_id"] == "usage:" + chat_event["request_id"]
    assert chat_event["request_id"] == raw.headers["x-request-id"] == chat_event["gateway_request_id"]


def test_streaming_with_exact_usage(gateway):
    server, built, mock, _, new_key, read_usage = gateway
    key, _ = new_key()
    client = _client(server, key)
    stream = client.chat.completions.create(model="cloud-small", messages=[{"role": "user", "content": "stream me"}],
                                            stream=True, stream_options={"include_usage": True})
    text, usage = [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text.append(c.delta.content or "")
    answer = "".join(text)
    assert answer and usage is not None
    assert usage.completion_tokens == len(answer.split()) and usage.prompt_tokens == 2

    # Without include_usage the client gets no usage chunk, but the usage event is still exact.
    stream = client.chat.completions.create(model="cloud-small", messages=[{"role": "user", "content": "stream me"}],
                                            stream=True)
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    events = read_usage(2)
    assert sorted(e["detail"]["completion_tokens"] for e in events) == [len(answer.split())] * 2


def test_cache_hit_and_miss(gateway):
    server, built, mock, _, new_key, read_usage = gateway
    key, _ = new_key()
    client = _client(server, key)
    body = dict(model="cloud-small", messages=[{"role": "user", "content": "cache " + uuid.uuid4().hex}],
                temperature=0, max_tokens=20)
    before = mock.calls["chat"]
    first = client.chat.completions.with_raw_response.create(**body)
    assert first.headers["x-ig3-cache"] == "miss"
    misses = 1
    deadline = time.time() + 5  # fills are write-behind: the next requests may still miss briefly
    second = None
    while time.time() < deadline:
        second = client.chat.completions.with_raw_response.create(**body)
        if second.headers["x-ig3-cache"] == "hit":
            break
        misses += 1
        time.sleep(0.05)
    assert second is not None and second.headers["x-ig3-cache"] == "hit"
    calls_after_hit = mock.calls["chat"]
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert second.parse().usage.completion_tokens == first.parse().usage.completion_tokens
    # The hit did not reach the upstream; a streamed request for the same thing is a hit too.
    stream = client.chat.completions.with_raw_response.create(**body, stream=True,
                                                              stream_options={"include_usage": True})
    assert stream.headers["x-ig3-cache"] == "hit"
    chunks = list(stream.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        first.parse().choices[0].message.content
    assert chunks[-1].usage.completion_tokens == first.parse().usage.completion_tokens
    assert mock.calls["chat"] == calls_after_hit
    assert calls_after_hit - before == misses  # only the misses went upstream
    # A seed makes a sampled request cacheable; a different temperature is a different entry.
    hit_events = [e["detail"] for e in read_usage(misses + 2) if e["detail"].get("cache") == "hit"]
    assert len(hit_events) == 2 and all(d["prompt_tokens"] == d["completion_tokens"] == 0 for d in hit_events)
    assert hit_events[0]["cached_completion_tokens"] == first.parse().usage.completion_tokens
    other = client.chat.completions.with_raw_response.create(**{**body, "temperature": 0.7})
    assert other.headers["x-ig3-cache"] == "skip"
    seeded = client.chat.completions.with_raw_response.create(**{**body, "temperature": 0.7, "seed": 7})
    assert seeded.headers["x-ig3-cache"] == "miss"


def test_rate_limit_429_with_retry_after(gateway):
    server, built, mock, _, new_key, _ = gateway
    key, _ = new_key(rpm_limit=3)
    client = _client(server, key)
    for _ in range(3):
        client.chat.completions.create(model="cloud-small", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    with pytest.raises(openai.RateLimitError) as exc_info:
        client.chat.completions.create(model="cloud-small", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    resp = exc_info.value.response
    assert resp.status_code == 429
    retry_after = int(resp.headers["retry-after"])
    assert 1 <= retry_after <= 120
    err = resp.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded" and "key rpm" in err["message"]
    # tpm: a request whose reservation exceeds the key's tpm outright is refused as too large.
    key2, _ = new_key(tpm_limit=100)
    with pytest.raises(openai.RateLimitError) as exc_info:
        _client(server, key2).chat.completions.create(model="cloud-small", messages=[{"role": "user", "content": "x"}],
                                                      max_tokens=500)
    assert exc_info.value.response.json()["error"]["code"] == "request_too_large"


def test_errors_have_openai_shape(gateway):
    server, _, _, _, new_key, _ = gateway
    key, _ = new_key()
    client = _client(server, key)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.response.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="cloud-small", messages=[])
    assert e.value.response.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="cloud-broken", messages=[{"role": "user", "content": "hi"}])
    assert e.value.response.json()["error"]["code"] == "mock_400"  # the upstream's 4xx relayed as is
    with pytest.raises(openai.AuthenticationError):
        _client(server, "ig3_sk_not_a_real_key").chat.completions.create(
            model="cloud-small", messages=[{"role": "user", "content": "hi"}])
    r = httpx.post(server.base_url + "/chat/completions", content=b"{not json",
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"type", "message", "code"}
    r = httpx.get(server.base_url + "/chat/completions", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 405
    r = httpx.post(server.base_url + "/chat/completions", content=b"x" * (5 * 1024 * 1024),
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    # A stream cut by the upstream after it began ends with an error event, not a hang.
    stream = client.chat.completions.create(model="cloud-cut", messages=[{"role": "user", "content": "hi"}],
                                            stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_redis_stopped_mid_test_degrades_without_blocking(gateway):
    server, built, mock, proxy, new_key, read_usage = gateway
    key, _ = new_key(rpm_limit=5)
    client = _client(server, key)
    body = dict(model="cloud-small", messages=[{"role": "user", "content": "before " + uuid.uuid4().hex}],
                temperature=0, max_tokens=10)
    ok = client.chat.completions.with_raw_response.create(**body)
    assert ok.headers["x-ig3-cache"] == "miss" and "x-ig3-degraded" not in ok.headers

    proxy.stop()  # Redis is gone for the gateway (connections reset, new ones refused)

    t0 = time.perf_counter()
    down = client.chat.completions.with_raw_response.create(**body)
    first_ms = (time.perf_counter() - t0) * 1000
    assert down.status_code == 200 and down.headers["x-ig3-degraded"] == "redis"
    assert down.headers["x-ig3-cache"] == "miss"  # cache bypassed while Redis is out
    t0 = time.perf_counter()
    for _ in range(3):
        r = client.chat.completions.with_raw_response.create(**body)
        assert r.headers["x-ig3-degraded"] == "redis"
    later_ms = (time.perf_counter() - t0) * 1000 / 3
    assert first_ms < 1000 and later_ms < 200, (first_ms, later_ms)  # never blocked on the dead Redis
    # Limits still hold, in process: rpm 5 (1 used against Redis, 4 against the local window).
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(3):
            client.chat.completions.create(**body)
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_litellm_path_is_lazy_and_counts_streamed_usage(gateway):
    import subprocess
    import sys

    server, built, mock, _, new_key, read_usage = gateway
    # Importing the llm app never imports litellm (checked in a fresh interpreter).
    code = "import sys, ig3_functions.llm.app, ig3.llm.gateway; print('litellm' in sys.modules)"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "False"
    assert built["gw"].litellm._router is None
    key, _ = new_key()
    client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)  # first use imports it
    before = mock.calls["chat"]
    out = client.chat.completions.create(model="via-litellm", messages=[{"role": "user", "content": "via the router"}],
                                         max_tokens=8)  # no temperature: not cacheable, both go upstream
    assert built["gw"].litellm._router is not None and mock.calls["chat"] == before + 1
    assert out.model == "via-litellm" and out.usage.completion_tokens == len(out.choices[0].message.content.split())
    stream = client.chat.completions.create(model="via-litellm", messages=[{"role": "user", "content": "via the router"}],
                                            max_tokens=8, stream=True,
                                            stream_options={"include_usage": True})
    text, usage = [], None
    for c in stream:
        usage = c.usage or usage
        text += [ch.delta.content or "" for ch in c.choices]
    assert "".join(text) == out.choices[0].message.content
    assert usage is not None and usage.completion_tokens == out.usage.completion_tokens
    assert mock.calls["chat"] == before + 2
    events = [e["detail"] for e in read_usage(2)]
    assert sorted(d["completion_tokens"] for d in events) == [out.usage.completion_tokens] * 2
