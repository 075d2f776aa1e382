"""A zero-latency OpenAI-compatible upstream (aiohttp) for the gateway's tests and benchmark.

Deterministic answers computed from the request (so a cache hit is distinguishable only by the
call counter), exact token counts (words), streaming with ``stream_options.include_usage``,
embeddings, ``/v1/models``. Failure knobs by model name: ``fail-<status>`` answers that status;
``cut-stream`` sends two chunks and drops the connection.

Run standalone: ``python bench/llm_mock_backend.py --port 9100`` (one process, one core).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import time

import orjson
from aiohttp import web

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima")


def _answer(seed_text: str, max_tokens: int | None) -> list[str]:
    h = hashlib.blake2b(seed_text.encode(), digest_size=8).digest()
    n = 4 + h[0] % 8
    words = [WORDS[b % len(WORDS)] for b in (h * 2)[:n]]
    return words[: max_tokens or len(words)]


def _prompt_of(body: dict) -> str:
    if "messages" in body:
        return "\n".join(str(m.get("content") or "") for m in body["messages"])
    p = body.get("prompt", "")
    return p if isinstance(p, str) else "\n".join(p)


class MockOpenAI:
    def __init__(self) -> None:
        self.calls: dict[str, int] = {"chat": 0, "completion": 0, "embedding": 0}
        self.last_body: dict | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completion)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/stats", self.stats)
        return app

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.calls)

    async def models(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"object": "list", "data": [
            {"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]}),
            content_type="application/json")

    @staticmethod
    def _fail(body: dict) -> web.Response | None:
        model = str(body.get("model", ""))
        if model.startswith("fail-"):
            status = int(model.split("-", 1)[1])
            return web.Response(status=status, content_type="application/json", body=orjson.dumps(
                {"error": {"message": f"mock failure {status}", "type": "mock_error", "code": f"mock_{status}"}}))
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def completion(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completion")

    async def _generate(self, request: web.Request, kind: str) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.last_body = body
        self.calls[kind] += 1
        failed = self._fail(body)
        if failed is not None:
            return failed
        prompt = _prompt_of(body)
        words = _answer(prompt + str(body.get("seed", "")), body.get("max_completion_tokens") or body.get("max_tokens"))
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(words),
                 "total_tokens": len(prompt.split()) + len(words)}
        rid, created, model = f"mock-{self.calls[kind]}", int(time.time()), body.get("model", "mock")
        finish = "length" if body.get("max_tokens") and len(words) >= body["max_tokens"] else "stop"
        if not body.get("stream"):
            if kind == "chat":
                choice = {"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                          "finish_reason": finish, "logprobs": None}
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": " ".join(words), "finish_reason": finish, "logprobs": None}
                obj = "text_completion"
            return web.Response(body=orjson.dumps({"id": rid, "object": obj, "created": created, "model": model,
                                                   "choices": [choice], "usage": usage}),
                                content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(choices: list, **extra: object) -> bytes:
            c = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices, **extra}
            if with_usage and "usage" not in extra:
                c["usage"] = None
            return b"data: " + orjson.dumps(c) + b"\n\n"

        out = []
        if kind == "chat":
            out.append(chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))
        for i, w in enumerate(words):
            piece = w if i == 0 else " " + w
            out.append(chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}] if kind == "chat"
                             else [{"index": 0, "text": piece, "finish_reason": None}]))
            if model == "cut-stream" and i == 1:
                await resp.write(b"".join(out))
                request.transport.close()
                return resp
        out.append(chunk([{"index": 0, "delta": {}, "finish_reason": finish}] if kind == "chat"
                         else [{"index": 0, "text": "", "finish_reason": finish}]))
        if with_usage:
            out.append(chunk([], usage=usage))
        out.append(b"data: [DONE]\n\n")
        await resp.write(b"".join(out))
        await resp.write_eof()
        return resp

    async def embeddings(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.calls["embedding"] += 1
        failed = self._fail(body)
        if failed is not None:
            return failed
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, t in enumerate(texts):
            h = hashlib.blake2b(str(t).encode(), digest_size=8).digest()
            data.append({"object": "embedding", "index": i, "embedding": [round(b / 255.0, 4) for b in h]})
        n = sum(len(str(t).split()) for t in texts)
        return web.Response(body=orjson.dumps({"object": "list", "data": data, "model": body.get("model"),
                                               "usage": {"prompt_tokens": n, "total_tokens": n}}),
                            content_type="application/json")


async def start(port: int = 0, host: str = "127.0.0.1") -> tuple[MockOpenAI, web.AppRunner, int]:
    mock = MockOpenAI()
    runner = web.AppRunner(mock.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return mock, runner, bound


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=9100)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def run() -> None:
        _, _, port = await start(args.port)
        print(f"READY {port}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
