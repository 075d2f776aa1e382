"""The llm function's ASGI app — a raw ASGI callable, no framework.

Why raw: the whole request path has 0.75 ms of CPU; a framework's routing, middleware stack and
request objects cost a sizeable share of that, and the app has five routes. Under AWS it is
run by uvicorn inside the container image, behind Lambda Web Adapter in ``response_stream``
mode (or on ECS Fargate behind a load balancer); locally the same app runs under uvicorn.

Lifespan: start-up builds the gateway (config, pools, background tasks), then ``gc.freeze()``
moves everything allocated so far into the permanent generation, so full collections no longer
walk the start-up heap (LiteLLM's p99 is dominated by such pauses on a large heap).
"""
from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from ig3.errors import DomainError, MethodNotAllowed, NotFound, PayloadTooLarge, Unavailable
from ig3.llm.gateway import MAX_BODY_BYTES
from ig3.log import logger

KINDS = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/embeddings": "embedding"}
_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]


def _encode(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    # Header values must be latin-1 (reasons are ASCII by construction; be safe anyway).
    return [(k.encode(), v.encode("latin-1", "replace")) for k, v in headers.items()]


async def _send_error(send: Callable, exc: DomainError) -> None:
    headers = [_JSON] + _encode({k.lower(): v for k, v in exc.headers.items()})
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": orjson.dumps(exc.body())})


class LlmApp:
    """ASGI callable. ``factory`` builds the gateway at start-up (lifespan) or on first request."""

    def __init__(self, factory: Callable[[], Awaitable[Any]], *, freeze_gc: bool = True):
        self._factory = factory
        self._freeze_gc = freeze_gc
        self.gateway: Any = None
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._lock: asyncio.Lock | None = None

    async def startup(self) -> None:
        if self.gateway is None:
            built = await self._factory()
            self.gateway, self._closers = built if isinstance(built, tuple) else (built, [])
            if self._freeze_gc:
                gc.collect()
                gc.freeze()

    async def shutdown(self) -> None:
        for close in self._closers:
            try:
                await close()
            except Exception:  # noqa: BLE001 — best effort at exit
                logger.exception("shutdown step failed")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    try:
                        await self.startup()
                    except Exception as exc:  # noqa: BLE001
                        logger.exception("llm gateway start-up failed")
                        await send({"type": "lifespan.startup.failed", "message": type(exc).__name__})
                        return
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await self.shutdown()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, scope: dict, receive: Callable, send: Callable) -> None:
        if self.gateway is None:  # servers without lifespan (some adapters): build on first use
            if self._lock is None:
                self._lock = asyncio.Lock()
            try:
                async with self._lock:
                    await self.startup()
            except Exception as exc:  # noqa: BLE001 — configuration or dependency failure
                logger.exception("llm gateway start-up failed", extra={"error_type": type(exc).__name__})
                await _send_error(send, Unavailable("the LLM gateway is not ready", code="not_ready"))
                return
        path, method = scope["path"], scope["method"]
        try:
            kind = KINDS.get(path)
            if kind is not None:
                if method != "POST":
                    raise MethodNotAllowed(f"{method} is not allowed on {path}; use POST")
                await self._generate(kind, scope, receive, send)
                return
            if path == "/v1/models":
                if method != "GET":
                    raise MethodNotAllowed(f"{method} is not allowed on {path}; use GET")
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
                await self.gateway.authorize(headers.get("authorization"))
                body = orjson.dumps(self.gateway.list_models())
                await send({"type": "http.response.start", "status": 200, "headers": [_JSON]})
                await send({"type": "http.response.body", "body": body})
                return
            if path in ("/health", "/v1/health"):
                await send({"type": "http.response.start", "status": 200, "headers": [_JSON]})
                await send({"type": "http.response.body",
                            "body": orjson.dumps({"ok": True, "redis": not self.gateway.redis.degraded})})
                return
            raise NotFound(f"Invalid URL ({method} {path})", code="unknown_url")
        except DomainError as exc:
            await _send_error(send, exc)
        except Exception as exc:  # noqa: BLE001 — unknown failure: type only, never the payload
            logger.exception("unhandled error", extra={"error_type": type(exc).__name__})
            await _send_error(send, DomainError("internal error"))

    async def _generate(self, kind: str, scope: dict, receive: Callable, send: Callable) -> None:
        chunks = []
        size = 0
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > MAX_BODY_BYTES:  # stop reading early: never buffer an unbounded body
                raise PayloadTooLarge(f"request body exceeds {MAX_BODY_BYTES} bytes")
            chunks.append(body)
            more = msg.get("more_body", False)
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        reply = await self.gateway.handle(kind, raw, headers)
        if reply.stream is None:
            await send({"type": "http.response.start", "status": reply.status, "headers": _encode(reply.headers)})
            await send({"type": "http.response.body", "body": reply.body})
            return
        stream = reply.stream
        try:
            # Headers go out with the first chunk: errors before it are still HTTP errors.
            first = await stream.__anext__()
        except StopAsyncIteration:
            first = b""
        except BaseException:
            await stream.aclose()
            raise
        await send({"type": "http.response.start", "status": 200,
                    "headers": _SSE_HEADERS + _encode(reply.headers)})
        try:
            await send({"type": "http.response.body", "body": first, "more_body": True})
            async for piece in stream:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-stream
        finally:
            await stream.aclose()
