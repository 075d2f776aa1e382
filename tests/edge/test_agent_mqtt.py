"""The agent against real brokers (Mosquitto on 127.0.0.1:1883; the embedded amqtt broker for
restarts) with real llama.cpp generation on tiny GGUF models and real signatures."""
from __future__ import annotations

import math
import shutil
import time

import pytest

from ig3 import wire
from ig3.wire import DeviceResult
from ig3_edge.signing import recover_signer
from tests.edge.brokers import EmbeddedBroker
from tests.edge.conftest import TINY, TINY_EMBED, Observer, task_msg, uid

pytestmark = pytest.mark.integration


def _greedy_reference(model_path, prompt: str, n: int) -> str:
    """The same generation straight through llama-cpp-python (no agent)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(model_path), n_ctx=512, n_threads=1, verbose=False)
    toks = []
    for tok in llm.generate(llm.tokenize(prompt.encode(), add_bos=True), top_k=1, temp=0.0):
        toks.append(tok)
        if len(toks) == n:
            break
    text = llm.detokenize(toks).decode("utf-8", errors="replace")
    llm.close()
    return text


@pytest.fixture
def broker_url(request, mqtt_url):
    """The real Mosquitto, or an embedded amqtt broker on a free port (MQTT 3.1.1 only)."""
    if request.param == "mosquitto":
        yield mqtt_url
        return
    broker = EmbeddedBroker().start()
    yield broker.url
    broker.stop()


@pytest.mark.parametrize(("broker_url", "protocol"), [("mosquitto", 4), ("mosquitto", 5), ("amqtt", 4)],
                         ids=["mosquitto-mqtt311", "mosquitto-mqtt5", "amqtt-mqtt311"], indirect=["broker_url"])
def test_stream_in_order_and_signed_result(broker_url, make_agent, tiny_models, protocol):
    mqtt_url = broker_url
    agent, thing = make_agent(mqtt_url, protocol=protocol)
    tid = uid("s")
    stream_topic = wire.task_stream_topic(tid)
    obs = Observer(mqtt_url, [wire.device_results_topic(thing), stream_topic], protocol=protocol)
    try:
        obs.publish(wire.device_tasks_topic(thing), task_msg(tid, prompt="the model answer", max_tokens=24))
        result = obs.wait_results(thing, [tid])[tid]
        chunks = obs.wait(lambda: (c := obs.bodies(stream_topic)) and c[-1].get("final") and c)
    finally:
        obs.close()
    assert result["status"] == "ok", result
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert [c.get("final", False) for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(c["delta"] for c in chunks) == result["output"]["text"]
    usage = result["usage"]
    assert usage["completion_tokens"] == 24 and usage["prompt_tokens"] > 0
    assert chunks[-1]["usage"]["completion_tokens"] == 24
    assert result["output"]["finish_reason"] == "length"
    assert result["output"]["text"] == _greedy_reference(tiny_models / "tiny.gguf", "the model answer", 24)
    signed = DeviceResult.model_validate(result)
    assert recover_signer(signed) == agent.signer.address == result["signer"]
    assert result["model_hash"] == agent.backend.model_hash(TINY)
    # The finished task feeds the heartbeat's speed figures (device EWMA and per model).
    hb = agent.heartbeat()
    assert hb.tokens_per_s == pytest.approx(usage["tokens_per_s"], rel=0.01)
    assert next(m for m in hb.models if m.name == TINY).tokens_per_s == pytest.approx(usage["tokens_per_s"], rel=0.01)
    assert hb.cpu_percent is not None and 0 < hb.mem_percent < 100


def test_stream_coalescing_merges_tokens_in_order(mqtt_url, make_agent):
    agent, thing = make_agent(mqtt_url, stream_coalesce_ms=20.0)
    tid = uid("co")
    stream_topic = wire.task_stream_topic(tid)
    obs = Observer(mqtt_url, [wire.device_results_topic(thing), stream_topic])
    try:
        obs.publish(wire.device_tasks_topic(thing), task_msg(tid, max_tokens=600))
        result = obs.wait_results(thing, [tid])[tid]
        chunks = obs.wait(lambda: (c := obs.bodies(stream_topic)) and c[-1].get("final") and c)
    finally:
        obs.close()
    assert result["usage"]["completion_tokens"] == 600
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["delta"] for c in chunks) == result["output"]["text"]
    # The first token goes out at once, then at most one chunk per 20 ms window, plus the final one.
    windows = result["usage"]["duration_ms"] / 20.0
    assert 2 <= len(chunks) <= windows + 3 and len(chunks) < 600


def test_chat_and_embeddings(mqtt_url, make_agent, tiny_models):
    import llama_cpp

    agent, thing = make_agent(mqtt_url, capacity=2)
    chat_id, emb_id = uid("c"), uid("e")
    obs = Observer(mqtt_url, [wire.device_results_topic(thing)])
    try:
        obs.publish(wire.device_tasks_topic(thing), task_msg(
            chat_id, kind="chat", max_tokens=8, messages=[{"role": "system", "content": "be brief"},
                                                          {"role": "user", "content": "hello"}]))
        obs.publish(wire.device_tasks_topic(thing), task_msg(
            emb_id, kind="embedding", model=TINY_EMBED, texts=["hello world", "edge device"], stream=False))
        res = obs.wait_results(thing, [chat_id, emb_id])
    finally:
        obs.close()
    chat = res[chat_id]
    assert chat["status"] == "ok" and chat["usage"]["completion_tokens"] == 8
    # The ChatML template wraps the two messages: more prompt tokens than the bare texts.
    assert chat["usage"]["prompt_tokens"] > 10
    emb = res[emb_id]
    assert emb["status"] == "ok", emb
    vectors = emb["output"]["embeddings"]
    assert len(vectors) == 2 and len(vectors[0]) == 64
    assert math.isclose(math.sqrt(sum(x * x for x in vectors[0])), 1.0, rel_tol=1e-4)
    ref = llama_cpp.Llama(str(tiny_models / "tiny-embed.gguf"), embedding=True, n_threads=1, verbose=False)
    expected = ref.embed(["hello world", "edge device"], normalize=True)
    ref.close()
    for got, want in zip(vectors, expected):
        assert max(abs(a - b) for a, b in zip(got, want)) < 1e-4
    # A chat task on a model without the kind is refused with a clear code.
    assert "embedding" not in next(m for m in agent.backend.models() if m.name == TINY).kinds


def test_concurrency_limit_and_back_pressure(mqtt_url, make_agent):
    agent, thing = make_agent(mqtt_url, capacity=1, max_queue=1, heartbeat_min_gap_s=0.0)
    ids = [uid(f"b{i}") for i in range(4)]
    hb_topic = wire.device_heartbeat_topic(thing)
    obs = Observer(mqtt_url, [wire.device_results_topic(thing), hb_topic])
    try:
        for tid in ids:  # each would take seconds: 4000 tokens
            obs.publish(wire.device_tasks_topic(thing), task_msg(tid, max_tokens=4000, stream=False))
        rejected = obs.wait(lambda: len(x := [r for r in obs.results(thing).values()
                                              if r.get("error", {}).get("code") == "overloaded"]) >= 2 and x)
        # The refusals come at once, while the accepted tasks are still running or queued.
        assert len(rejected) == 2 and not [r for r in obs.results(thing).values() if r["status"] == "ok"]
        assert all(r["error"]["retryable"] for r in rejected)
        assert {r["task_id"] for r in rejected} == set(ids[2:])
        end = time.monotonic() + 5
        while (agent.executor.in_flight, agent.executor.queued) != (1, 1) and time.monotonic() < end:
            time.sleep(0.01)  # the worker picks the first task up on its own thread
        assert (agent.executor.in_flight, agent.executor.queued) == (1, 1)
        for tid in ids[:2]:  # end them early
            obs.publish(wire.device_cancel_topic(thing), {"task_id": tid})
        res = obs.wait_results(thing, ids)
        heartbeats = obs.bodies(hb_topic)
    finally:
        obs.close()
    assert [res[t]["error"]["code"] for t in ids[:2]] == ["cancelled", "cancelled"]
    loads = [h["load"] for h in heartbeats]
    assert max(h["in_flight"] for h in loads) == 1  # never more than capacity
    assert any(h["queued"] == 1 for h in loads) and all(h["capacity"] == 1 for h in loads)


def test_deadline_stops_generation(mqtt_url, make_agent):
    agent, thing = make_agent(mqtt_url)
    tid = uid("d")
    stream_topic = wire.task_stream_topic(tid)
    obs = Observer(mqtt_url, [wire.device_results_topic(thing), stream_topic])
    try:
        t0 = time.monotonic()
        obs.publish(wire.device_tasks_topic(thing), task_msg(tid, max_tokens=4000, deadline_s=0.4))
        res = obs.wait_results(thing, [tid])[tid]
        elapsed = time.monotonic() - t0
        chunks = obs.wait(lambda: (c := obs.bodies(stream_topic)) and c[-1].get("final") and c)
    finally:
        obs.close()
    assert res["status"] == "error" and res["error"]["code"] == "deadline_exceeded" and res["error"]["retryable"]
    assert res["output"]["finish_reason"] == "deadline"
    assert 0 < res["usage"]["completion_tokens"] < 4000
    assert elapsed < 3.0
    assert chunks[-1]["error"]["code"] == "deadline_exceeded"
    # A task whose deadline already passed is refused without running.
    late = uid("late")
    obs = Observer(mqtt_url, [wire.device_results_topic(thing)])
    try:
        obs.publish(wire.device_tasks_topic(thing), task_msg(late, deadline_s=-1))
        r = obs.wait_results(thing, [late])[late]
    finally:
        obs.close()
    assert r["error"]["code"] == "deadline_exceeded" and "usage" not in r


@pytest.mark.parametrize("broker_url", ["mosquitto", "amqtt"], indirect=True)
def test_malformed_tasks_get_error_results_and_agent_keeps_working(broker_url, make_agent):
    mqtt_url = broker_url
    agent, thing = make_agent(mqtt_url)
    topic = wire.device_tasks_topic(thing)
    bad_kind, no_model, bad_input, good = uid("k"), uid("m"), uid("i"), uid("g")
    obs = Observer(mqtt_url, [wire.device_results_topic(thing)])
    try:
        obs.publish(topic, b"\xff{not json")
        obs.publish(topic, {"id": "no spaces allowed", "attempt": 1})
        obs.publish(topic, {**task_msg(bad_kind), "kind": "painting"})
        obs.publish(topic, task_msg(no_model, model="no-such-model"))
        obs.publish(topic, task_msg(bad_input, kind="chat", messages=[]))
        obs.publish(topic, task_msg(good, max_tokens=4))
        res = obs.wait_results(thing, [bad_kind, no_model, bad_input, good])
    finally:
        obs.close()
    assert res[bad_kind]["error"]["code"] == "bad_task" and "kind" in res[bad_kind]["error"]["message"]
    assert not res[bad_kind]["error"]["retryable"]
    assert res[no_model]["error"] == {"code": "model_not_found", "message": res[no_model]["error"]["message"],
                                      "retryable": True}
    assert res[bad_input]["error"]["code"] == "bad_task"
    assert res[good]["status"] == "ok"
    assert agent.counters["dropped"] == 2  # the two that carry no usable id/attempt
    assert all(DeviceResult.model_validate(r).signature for r in res.values())


def test_duplicate_delivery_is_answered_once_with_the_same_result(mqtt_url, make_agent):
    agent, thing = make_agent(mqtt_url)
    tid = uid("dup")
    msg = task_msg(tid, max_tokens=32)
    obs = Observer(mqtt_url, [wire.device_results_topic(thing)])
    try:
        obs.publish(wire.device_tasks_topic(thing), msg)
        obs.publish(wire.device_tasks_topic(thing), msg)  # while it runs or is queued: ignored
        obs.wait_results(thing, [tid])
        obs.publish(wire.device_tasks_topic(thing), msg)  # after the answer: the same answer again
        answers = obs.wait(lambda: len(b := obs.bodies(wire.device_results_topic(thing))) >= 2 and b)
    finally:
        obs.close()
    assert len(answers) == 2 and answers[0] == answers[1]
    assert agent.counters["ok"] == 1


def test_broker_restart_reconnects_and_continues(embedded_broker, make_agent):
    agent, thing = make_agent(embedded_broker.url)
    first, second = uid("r1"), uid("r2")
    obs = Observer(embedded_broker.url, [wire.device_results_topic(thing)])
    obs.publish(wire.device_tasks_topic(thing), task_msg(first, max_tokens=4))
    assert obs.wait_results(thing, [first])[first]["status"] == "ok"
    obs.close()
    embedded_broker.stop()
    deadline = time.monotonic() + 5
    while agent.transport.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not agent.transport.connected
    embedded_broker.start()  # same port, empty broker: no sessions, no subscriptions
    deadline = time.monotonic() + 10
    while not agent.transport.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent.transport.connected and agent.transport.reconnects >= 1
    time.sleep(0.3)  # the re-subscribe travels right after CONNACK
    obs = Observer(embedded_broker.url, [wire.device_results_topic(thing)])
    try:
        obs.publish(wire.device_tasks_topic(thing), task_msg(second, max_tokens=4))
        assert obs.wait_results(thing, [second])[second]["status"] == "ok"
    finally:
        obs.close()


def test_models_added_and_removed_without_restart(mqtt_url, make_agent, tiny_models, tmp_path):
    shutil.copy(tiny_models / "tiny.gguf", tmp_path / "tiny.gguf")
    agent, thing = make_agent(mqtt_url, models_dir=tmp_path, scan_interval_s=0.2, heartbeat_min_gap_s=0.0)
    hb_topic = wire.device_heartbeat_topic(thing)
    obs = Observer(mqtt_url, [wire.device_results_topic(thing), hb_topic])
    try:
        shutil.copy(tiny_models / "tiny-embed.gguf", tmp_path / "tiny-embed.gguf")
        hb = obs.wait(lambda: [h for h in obs.bodies(hb_topic) if TINY_EMBED in {m["name"] for m in h["models"]}])
        model = next(m for m in hb[-1]["models"] if m["name"] == TINY_EMBED)
        assert model["arch"] == "llama" and model["quant"] == "F32" and model["ctx"] == 512
        assert "embedding" in model["kinds"] and len(model["sha256"]) == 64 and model["params"] > 100_000
        (tmp_path / "tiny.gguf").unlink()
        obs.wait(lambda: [h for h in obs.bodies(hb_topic) if {m["name"] for m in h["models"]} == {TINY_EMBED}])
        gone = uid("gone")
        obs.publish(wire.device_tasks_topic(thing), task_msg(gone))
        assert obs.wait_results(thing, [gone])[gone]["error"]["code"] == "model_not_found"
    finally:
        obs.close()
