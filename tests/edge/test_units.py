"""Pure pieces of the agent: model discovery and naming, stop strings, configuration, executor,
heartbeat coalescing — plus the llama.cpp backend's limits on the tiny model."""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ig3.wire import DeviceTask, TaskLimits
from ig3_edge.backends.base import StopStringFilter, TaskError
from ig3_edge.backends.llama_cpp import LlamaCppBackend
from ig3_edge.config import parse_config
from ig3_edge.executor import Executor, Job
from ig3_edge.models import ModelRegistry, read_gguf, routable_name
from ig3_edge.tinymodel import write_tiny_gguf


def test_routable_name_rules():
    # A hub-style release file <Model>.<QUANT>.gguf is named by its file ...
    assert routable_name("Smollm2 135M 8k Lc100K Mix1 Ep2",
                         Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == "smollm2-135m-instruct"
    assert routable_name("  ", Path("/m/Qwen2.5-0.5B.Q4_K_M.gguf")) == "qwen2.5-0.5b"
    # ... otherwise by its general.name, else by the file stem.
    assert routable_name("SmolLM2 135M Instruct", Path("x.gguf")) == "smollm2-135m-instruct"
    assert routable_name(None, Path("Tiny.gguf")) == "tiny"


def test_gguf_metadata_and_discovery(tiny_models, tmp_path):
    m = read_gguf(tiny_models / "tiny.gguf")
    assert (m.name, m.arch, m.ctx, m.quant) == ("tiny-llama", "llama", 4096, "F32")
    assert m.kinds == ("chat", "completion") and m.chat_template and (m.bos_token, m.eos_token) == ("<s>", "</s>")
    # parameter count = the tensors' elements: 2 blocks + embeddings + output + norms
    vocab = len(__import__("ig3_edge.tinymodel", fromlist=["_vocab"])._vocab()[0])
    per_block = 4 * 64 * 64 + 3 * 64 * 128 + 2 * 64
    assert m.params == 2 * per_block + 2 * vocab * 64 + 64
    assert read_gguf(tiny_models / "tiny-embed.gguf").kinds == ("chat", "completion", "embedding")

    reg = ModelRegistry(tmp_path)
    assert reg.scan() == ([], [])
    shutil.copy(tiny_models / "tiny.gguf", tmp_path / "a.gguf")
    shutil.copy(tiny_models / "tiny.gguf", tmp_path / "b.gguf")  # same general.name: shadowed
    (tmp_path / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00 half a header")
    added, removed = reg.scan()
    assert [x.path.name for x in added] == ["a.gguf"] and removed == []
    assert reg.scan() == ([], [])  # nothing changed: nothing re-read
    (tmp_path / "a.gguf").unlink()
    added, removed = reg.scan()
    assert [x.path.name for x in removed] == ["a.gguf"] and [x.path.name for x in added] == ["b.gguf"]
    assert reg.get("tiny-llama").path.name == "b.gguf"


def test_stop_string_filter_holds_back_partial_matches():
    f = StopStringFilter(["</end>", "STOP"])
    assert f.feed("hello </") == ("hello ", False)
    assert f.feed("en") == ("", False)
    assert f.feed("x more") == ("</enx more", False)
    assert f.feed(" ST") == (" ", False)
    assert f.feed("OP and after") == ("", True)
    g = StopStringFilter([])
    assert g.feed("anything") == ("anything", False)


@given(st.text(alphabet="abST<>/OPend ", max_size=40), st.lists(st.integers(1, 5), max_size=20))
def test_stop_filter_equals_cutting_the_whole_text(text, cuts):
    stops = ["STOP", "</end>"]
    f = StopStringFilter(stops)
    out, hit, pos = [], False, 0
    for c in cuts + [len(text)]:
        piece, pos = text[pos:pos + c], pos + c
        emitted, hit = f.feed(piece)
        out.append(emitted)
        if hit:
            break
    if not hit:
        out.append(f.flush())
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    assert "".join(out) == text[:cut]


def test_config_from_env_and_options(monkeypatch):
    monkeypatch.setenv("IG3_AGENT_THING", "dev-1")
    monkeypatch.setenv("IG3_AGENT_MODELS_DIR", "/models")
    monkeypatch.setenv("IG3_AGENT_CAPACITY", "3")
    monkeypatch.setenv("IG3_AGENT_REGION", "")
    monkeypatch.setenv("IG3_AGENT_LAT", "52.5")
    cfg = parse_config(["--capacity", "2", "--heartbeat-s", "5", "--mqtt-protocol", "5"])
    assert (cfg.thing, str(cfg.models_dir), cfg.capacity, cfg.heartbeat_s, cfg.mqtt_protocol) == \
        ("dev-1", "/models", 2, 5.0, 5)
    assert cfg.region is None and cfg.lat == 52.5 and cfg.lon is None
    monkeypatch.delenv("IG3_AGENT_THING")
    with pytest.raises(SystemExit):
        parse_config([])


def _job(i: int) -> Job:
    return Job(DeviceTask.model_validate({"id": f"j{i}", "attempt": 1, "kind": "completion", "model": "m",
                                          "input": {"prompt": "x"}, "deadline": time.time() + 60}))


def test_executor_bounds_and_drain():
    gate = threading.Event()
    running = []
    ex = Executor(2, 1, lambda job: (running.append(job.key), gate.wait(5)))
    assert all(ex.submit(_job(i)) for i in range(3))
    assert not ex.submit(_job(3))  # 2 running + 1 queued: full
    deadline = time.monotonic() + 2
    while len(running) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ex.in_flight == 2 and ex.queued == 1 and len(ex.find("j0")) == 1
    queued, still = ex.drain(0.05)
    assert [j.task.id for j in queued] == ["j2"] and {j.task.id for j in still} == {"j0", "j1"}
    assert not ex.submit(_job(4))  # no intake after drain
    gate.set()
    assert ex.wait_idle(5)
    ex.stop()


def test_llama_backend_limits_and_errors(tiny_models):
    backend = LlamaCppBackend(ModelRegistry(tiny_models), slots=1, n_threads=1, n_ctx=64)
    backend.refresh()
    deltas: list[str] = []
    g = backend.generate("tiny-llama", messages=None, prompt="hello", limits=TaskLimits(max_tokens=2000),
                         on_delta=deltas.append, should_stop=lambda: None)
    n_ctx = backend._pools[("tiny-llama", False)].idle[0].n_ctx()  # llama.cpp pads the 64 asked for
    assert g.finish_reason == "length" and g.prompt_tokens + g.completion_tokens == n_ctx < 2000
    assert "".join(deltas) == g.text
    with pytest.raises(TaskError) as err:
        backend.generate("tiny-llama", messages=None, prompt="hello world " * 400, limits=TaskLimits(),
                         on_delta=lambda d: None, should_stop=lambda: None)
    assert err.value.code == "context_length_exceeded"
    checks = []  # should_stop runs once before the first token and once after every token

    def stop_after_five() -> str | None:
        checks.append(1)
        return "cancelled" if len(checks) > 5 else None

    c = backend.generate("tiny-llama", messages=None, prompt="x", limits=TaskLimits(max_tokens=50),
                         on_delta=lambda d: None, should_stop=stop_after_five)
    assert c.finish_reason == "cancelled" and c.completion_tokens == 5
    # A stop string cuts the text where it starts and ends the generation there.
    full = backend.generate("tiny-llama", messages=None, prompt="the", limits=TaskLimits(max_tokens=30),
                            on_delta=lambda d: None, should_stop=lambda: None).text
    stop = full[10:13]
    cut = backend.generate("tiny-llama", messages=None, prompt="the", limits=TaskLimits(max_tokens=30, stop=[stop]),
                           on_delta=lambda d: None, should_stop=lambda: None)
    assert cut.finish_reason == "stop" and cut.text == full[:full.find(stop)]
    # Same seed + temperature: the same sample; greedy ignores the seed.
    a = [backend.generate("tiny-llama", messages=None, prompt="the", limits=TaskLimits(max_tokens=12, temperature=1.0,
                                                                                       seed=s),
                          on_delta=lambda d: None, should_stop=lambda: None).text for s in (1, 1, 2)]
    assert a[0] == a[1] and a[0] != a[2]
    with pytest.raises(TaskError) as err:
        backend.embed("tiny-llama", ["x"])
    assert err.value.code == "unsupported_kind"
    backend.close()


def test_tiny_model_is_small_and_deterministic(tmp_path):
    a = write_tiny_gguf(tmp_path / "a.gguf", seed=3)
    b = write_tiny_gguf(tmp_path / "b.gguf", seed=3)
    c = write_tiny_gguf(tmp_path / "c.gguf", seed=4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert a.stat().st_size < 1_000_000
