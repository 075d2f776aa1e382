"""The edge-vs-cloud policy (pure)."""
from __future__ import annotations

import pytest

from ig3.errors import BadRequest, NotFound, Unavailable
from ig3.llm.config import parse_config
from ig3.llm.routing import EdgeCapacity, Features, Router

CFG = parse_config({
    "model_list": [
        {"model_name": "gpt-small", "litellm_params": {"model": "openai/gpt-small", "api_base": "http://x/v1"},
         "model_info": {"ig3_ttft_ms": 400, "ig3_tokens_per_s": 100}},
        {"model_name": "claude", "litellm_params": {"model": "anthropic/claude-3-5-haiku"}},
        {"model_name": "llama-70b-tp", "litellm_params": {"model": "sagemaker_chat/llama-70b-tp4"}},
    ],
    "ig3": {"aliases": {"ig3/auto": {"edge": ["tiny"], "cloud": "gpt-small"},
                        "ig3/fast": {"edge": ["tiny"], "cloud": "gpt-small"}}},
})
TINY = EdgeCapacity("tiny", devices=4, free_slots=3, tokens_per_s=50, ctx=2048)


def feat(**kw) -> Features:
    base = dict(kind="chat", prompt_tokens=50, max_tokens=64)
    return Features(**{**base, **kw})


def test_config_direct_vs_litellm_and_groups():
    assert CFG.groups["gpt-small"][0].direct is True
    assert CFG.groups["claude"][0].direct is False and CFG.groups["llama-70b-tp"][0].provider == "sagemaker_chat"
    assert CFG.needs_litellm()


def test_auto_prefers_edge_within_slo():
    d = Router(CFG).decide("ig3/auto", feat(), {"tiny": TINY})
    assert d.route == "edge" and d.model == "tiny" and "SLO" in d.reason


@pytest.mark.parametrize("change, why", [
    (dict(structured=True), "tools/JSON"),
    (dict(n=2), "n>1"),
    (dict(text_only=False), "non-text"),
    (dict(prompt_tokens=3000), "context"),
    (dict(non_latin=0.8), "language"),
])
def test_auto_sends_what_the_edge_cannot_do_to_cloud(change, why):
    d = Router(CFG).decide("ig3/auto", feat(**change), {"tiny": TINY})
    assert d.route == "cloud" and d.model == "gpt-small" and why in d.reason


def test_auto_urgency_and_capacity():
    r = Router(CFG)
    # 512 output tokens at 50 tok/s is ~10 s: fine for normal urgency, not for high.
    assert r.decide("ig3/auto", feat(max_tokens=512), {"tiny": TINY}).route == "edge"
    high = r.decide("ig3/auto", feat(max_tokens=512, urgency="high"), {"tiny": TINY})
    assert high.route == "cloud" and "misses SLO" in high.reason
    assert r.decide("ig3/auto", feat(max_tokens=512, slo_ms=60_000, urgency="high"), {"tiny": TINY}).route == "edge"
    # No device online -> cloud; busy devices -> queue wait counted.
    assert r.decide("ig3/auto", feat(), {}).reason == "no edge device online for the model"
    busy = EdgeCapacity("tiny", devices=1, free_slots=0, queued=20, tokens_per_s=50)
    d = r.decide("ig3/auto", feat(max_tokens=200), {"tiny": busy})
    assert d.route == "cloud" and "queued" in d.reason


def test_fast_takes_lower_latency():
    r = Router(CFG)
    assert r.decide("ig3/fast", feat(max_tokens=8), {"tiny": TINY}).route == "edge"  # 160 ms < 480 ms
    assert r.decide("ig3/fast", feat(max_tokens=200), {"tiny": TINY}).route == "cloud"  # 4 s > 2.4 s


def test_concrete_models():
    r = Router(CFG)
    assert r.decide("tiny", feat(), {"tiny": TINY}).route == "edge"
    d = r.decide("llama-70b-tp", feat(), {})
    assert d.route == "cloud" and len(d.deployments) == 1  # a tensor-parallel endpoint: one target
    with pytest.raises(NotFound):
        r.decide("nope", feat(), {})
    with pytest.raises(BadRequest):
        r.decide("tiny", feat(structured=True), {"tiny": TINY})
    with pytest.raises(Unavailable):
        r.decide("tiny", feat(), {"tiny": EdgeCapacity("tiny", devices=0, free_slots=0)})
    no_cloud = parse_config({"ig3": {"aliases": {"ig3/auto": {"edge": ["tiny"]}}}})
    with pytest.raises(Unavailable):
        Router(no_cloud).decide("ig3/auto", feat(), {})


def test_model_group_is_one_target_with_group_capacity():
    # The catalogue reports a device group (llama.cpp RPC) as one entry; routing uses its capacity as is.
    group = EdgeCapacity("llama-8b-rpc", devices=1, free_slots=1, tokens_per_s=12, ctx=8192)
    cfg = parse_config({"model_list": CFG.model_list,
                        "ig3": {"aliases": {"ig3/auto": {"edge": ["tiny", "llama-8b-rpc"], "cloud": "gpt-small"}}}})
    edge = {"tiny": TINY, "llama-8b-rpc": group}
    d = Router(cfg).decide("ig3/auto", feat(prompt_tokens=4000, max_tokens=100, urgency="low"), edge)
    assert d.route == "edge" and d.model == "llama-8b-rpc"  # only the group has the context for it
    # ~50 s at the group's 12 tok/s: too slow for the normal SLO, so the cloud takes it.
    assert Router(cfg).decide("ig3/auto", feat(prompt_tokens=4000, max_tokens=100), edge).route == "cloud"


def test_alias_without_edge_list_uses_any_live_model():
    cfg = parse_config({})  # ig3/auto exists by default, with no configuration at all
    fast = EdgeCapacity("fast-one", devices=1, free_slots=1, tokens_per_s=80)
    slow = EdgeCapacity("slow-one", devices=1, free_slots=1, tokens_per_s=5)
    d = Router(cfg).decide("ig3/auto", feat(), {"slow-one": slow, "fast-one": fast})
    assert d.route == "edge" and d.model == "fast-one"
    with pytest.raises(Unavailable):
        Router(cfg).decide("ig3/auto", feat(), {})


def test_a_model_the_fleet_served_is_a_retryable_503_while_no_device_is_online_not_a_404():
    """Redis out (the catalogue refresh fails past its 30 s trust) or the whole fleet briefly gone
    (heartbeats lost in an outage): a model seen online within the hour is 503 ``no_capacity``."""
    import asyncio

    from ig3.llm.edge import LiveCatalogue

    rows: list = [{"model": "tiny", "devices": 2, "free_capacity": 2}]

    def source():
        if rows is None:
            raise ConnectionError("redis is down")
        return rows

    cat = LiveCatalogue(source)
    router = Router(parse_config({}))
    asyncio.run(cat.refresh())
    assert router.decide("tiny", feat(), cat.snapshot()).route == "edge"

    rows = []  # the fleet went offline
    asyncio.run(cat.refresh())
    assert cat.snapshot()["tiny"].devices == 0
    with pytest.raises(Unavailable) as e:
        router.decide("tiny", feat(), cat.snapshot())
    assert e.value.code == "no_capacity"

    rows = None  # Redis out, and the last good snapshot is too old to trust
    cat.updated_at -= 60
    asyncio.run(cat.refresh())
    with pytest.raises(Unavailable):
        router.decide("tiny", feat(), cat.snapshot())
    with pytest.raises(NotFound):  # a model the network never served is still unknown
        router.decide("never-served", feat(), cat.snapshot())

    cat._known["tiny"] = (cat._known["tiny"][0] - LiveCatalogue.KNOWN_S - 1, cat._known["tiny"][1])
    asyncio.run(cat.refresh())
    with pytest.raises(NotFound):  # forgotten after an hour unseen
        router.decide("tiny", feat(), cat.snapshot())
