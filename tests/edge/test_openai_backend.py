"""The OpenAI-compatible server backend against a local server that speaks llama-server's API
(SSE streaming with usage, /v1/models, /v1/embeddings) and generates with real llama.cpp.

llama-server and Ollama are not installed here, so the server is a small aiohttp app over
``llama_cpp.Llama``'s own OpenAI-shaped streaming calls — the wire format is the real one."""
from __future__ import annotations

import asyncio
import json
import threading

import pytest

from ig3.wire import ChatMessage, TaskLimits
from ig3_edge.backends.base import TaskError
from ig3_edge.backends.openai_server import OpenAIServerBackend
from tests.edge.brokers import free_port


@pytest.fixture(scope="module")
def openai_server(tiny_models):
    import llama_cpp
    from aiohttp import web

    gen = llama_cpp.Llama(str(tiny_models / "tiny.gguf"), n_ctx=4096, n_threads=1, verbose=False)
    emb = llama_cpp.Llama(str(tiny_models / "tiny-embed.gguf"), embedding=True, n_threads=1, verbose=False)
    lock = threading.Lock()
    state = {"disconnects": 0}

    async def sse(request, chunks):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for chunk in chunks:
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                await asyncio.sleep(0)
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            state["disconnects"] += 1
            raise
        return resp

    def with_usage(chunks, usage):
        yield from chunks
        yield {"choices": [], "usage": {k: usage[k] for k in ("prompt_tokens", "completion_tokens")}}

    # llama-cpp-python's streams carry no usage; its non-streaming twin (same greedy run) does.
    async def completions(request):
        body = await request.json()
        kw = {"max_tokens": body["max_tokens"], "temperature": body["temperature"]}
        with lock:
            usage = gen.create_completion(body["prompt"], **kw)["usage"]
            chunks = list(gen.create_completion(body["prompt"], stream=True, **kw))
        return await sse(request, with_usage(chunks, usage))

    async def chat(request):
        body = await request.json()
        kw = {"max_tokens": body["max_tokens"], "temperature": body["temperature"]}
        with lock:
            usage = gen.create_chat_completion(body["messages"], **kw)["usage"]
            chunks = list(gen.create_chat_completion(body["messages"], stream=True, **kw))
        return await sse(request, with_usage(chunks, usage))

    async def embeddings(request):
        body = await request.json()
        with lock:
            vecs = emb.embed(body["input"], normalize=True)
        return web.json_response({"data": [{"index": i, "embedding": v} for i, v in enumerate(vecs)],
                                  "usage": {"prompt_tokens": 3}})

    async def models(request):
        return web.json_response({"data": [{"id": "tiny-llama"}, {"id": "tiny-embed"}]})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    started = threading.Event()

    def serve():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert started.wait(10)
    yield f"http://127.0.0.1:{port}", gen, state
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)
    gen.close()
    emb.close()


def test_openai_backend_streams_completion_and_chat(openai_server):
    url, gen, _state = openai_server
    backend = OpenAIServerBackend(url, embedding_models=["tiny-embed"])
    assert backend.refresh() is True
    assert {m.name for m in backend.models()} == {"tiny-llama", "tiny-embed"}
    deltas: list[str] = []
    g = backend.generate("tiny-llama", messages=None, prompt="hello world", limits=TaskLimits(max_tokens=12),
                         on_delta=deltas.append, should_stop=lambda: None)
    assert g.completion_tokens == 12 and g.prompt_tokens > 0 and g.finish_reason == "length"
    assert "".join(deltas) == g.text and len(deltas) >= 2 and g.ttft_ms is not None
    direct = gen.create_completion("hello world", max_tokens=12, temperature=0.0)["choices"][0]["text"]
    assert g.text == direct
    c = backend.generate("tiny-llama", messages=[ChatMessage(role="user", content="hi")], prompt=None,
                         limits=TaskLimits(max_tokens=5), on_delta=lambda d: None, should_stop=lambda: None)
    assert c.completion_tokens == 5 and c.text
    e = backend.embed("tiny-embed", ["a", "b"])
    assert len(e.vectors) == 2 and len(e.vectors[0]) == 64
    backend.close()


def test_openai_backend_cancels_and_reports_server_errors(openai_server):
    url, _gen, _state = openai_server
    backend = OpenAIServerBackend(url, models=["tiny-llama"])
    seen: list[str] = []
    g = backend.generate("tiny-llama", messages=None, prompt="hello", limits=TaskLimits(max_tokens=60),
                         on_delta=seen.append, should_stop=lambda: "cancelled" if len(seen) >= 3 else None)
    assert g.finish_reason == "cancelled" and len(seen) == 3 and g.completion_tokens >= 3
    # The connection was dropped to cancel; the next call opens a fresh one and works.
    ok = backend.generate("tiny-llama", messages=None, prompt="hello", limits=TaskLimits(max_tokens=2),
                          on_delta=lambda d: None, should_stop=lambda: None)
    assert ok.completion_tokens == 2
    with pytest.raises(TaskError) as err:
        backend._request("POST", "/nope", {})
    assert err.value.code in ("backend_error", "bad_task") and not err.value.retryable
    dead = OpenAIServerBackend("http://127.0.0.1:9", models=["m"])
    with pytest.raises(TaskError) as err:
        dead.generate("m", messages=None, prompt="x", limits=TaskLimits(max_tokens=1), on_delta=lambda d: None,
                      should_stop=lambda: None)
    assert err.value.code == "backend_unavailable" and err.value.retryable
