"""The local API Gateway: HTTP requests -> the authorizer -> API Gateway (REST) proxy events.

Same contract as API Gateway in AWS: routes come from the topology, unknown routes and methods
are answered here, bodies over the limit are refused before any function runs, the Lambda
authorizer's logic decides who the caller is (its context reaches the function as
``requestContext.authorizer``), and the function's proxy response becomes the HTTP response.
The llm function's ASGI app, when mounted, serves its routes directly (in AWS it runs behind
Lambda Web Adapter in response-stream mode; locally the same app is called in-process).
"""
from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, is_dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson

from ig3.errors import DomainError, NotFound, PayloadTooLarge, Unauthorized, error_body
from ig3.local.lambda_runtime import LambdaRuntime
from ig3.observability import logger
from ig3.topology import ApiRoute, Topology

MAX_BODY_BYTES = 1024 * 1024  # well under API Gateway's 10 MB; functions apply their own, smaller limits
DISCARD_BYTES = 10 * 1024 * 1024  # a refused body is drained up to API Gateway's own limit, then dropped
Authorize = Callable[[str | None, str], Any]  # (bearer token or None, route auth kind) -> Principal


def _route_regex(path: str) -> re.Pattern[str]:
    pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", re.escape(path).replace(r"\{", "{").replace(r"\}", "}"))
    return re.compile(f"^{pattern}$")


class RouteTable:
    def __init__(self, routes: tuple[ApiRoute, ...]):
        self._routes = [(r, _route_regex(r.path)) for r in routes]

    def match(self, method: str, path: str) -> tuple[ApiRoute | None, dict[str, str], bool]:
        """(route, path params, path exists for another method)."""
        path_known = False
        for route, regex in self._routes:
            m = regex.match(path)
            if m:
                path_known = True
                if route.method == method:
                    return route, m.groupdict(), True
        return None, {}, path_known


def proxy_event(*, route: ApiRoute, method: str, path: str, params: dict[str, str], headers: list[tuple[bytes, bytes]],
                query: str, body: bytes, client: tuple[str, int] | None, authorizer: dict[str, Any] | None,
                stage: str = "local") -> dict[str, Any]:
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for k, v in headers:
        key, value = k.decode("latin-1"), v.decode("latin-1")
        # API Gateway keeps the client's header case; HTTP/ASGI lowercases — handlers must be case-insensitive.
        single[key] = value
        multi.setdefault(key, []).append(value)
    qs = parse_qs(query, keep_blank_values=True) if query else {}
    is_text = True
    try:
        text_body = body.decode("utf-8") if body else None
    except UnicodeDecodeError:
        is_text = False
        text_body = base64.b64encode(body).decode()
    now_ms = int(time.time() * 1000)
    request_id = str(uuid.uuid4())
    return {
        "resource": route.path,
        "path": path,
        "httpMethod": method,
        "headers": single or None,
        "multiValueHeaders": multi or None,
        "queryStringParameters": {k: v[-1] for k, v in qs.items()} or None,
        "multiValueQueryStringParameters": qs or None,
        "pathParameters": params or None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": route.path, "httpMethod": method, "path": f"/{stage}{path}", "stage": stage,
            "requestId": request_id, "extendedRequestId": request_id, "requestTimeEpoch": now_ms,
            "accountId": "000000000000", "apiId": "local", "domainName": single.get("host", "localhost"),
            "protocol": "HTTP/1.1",
            "identity": {"sourceIp": client[0] if client else "127.0.0.1", "userAgent": single.get("user-agent")},
            "authorizer": authorizer,
        },
        "body": text_body,
        "isBase64Encoded": not is_text,
    }


def principal_context(principal: Any) -> dict[str, Any]:
    """The authorizer's context map (flat strings, as API Gateway passes it)."""
    raw = asdict(principal) if is_dataclass(principal) else dict(principal)
    ctx: dict[str, Any] = {}
    for k, v in raw.items():
        if v is None:
            continue
        if k == "subject":
            ctx["principal"] = v
        elif k == "kind":
            ctx["principal_type"] = v
        elif k == "scopes":
            ctx["scopes"] = " ".join(sorted(v))
        else:
            ctx[k] = v if isinstance(v, (str, int, float, bool)) else str(v)
    return ctx


class LocalApiGateway:
    """An ASGI app: ``/health``, the llm app's routes (if mounted), and the topology's REST routes."""

    def __init__(self, topology: Topology, runtime: LambdaRuntime, *, authorize: Authorize | None,
                 llm_app: Callable[..., Awaitable[None]] | None = None, llm_prefixes: tuple[str, ...] = (),
                 health: Callable[[], dict[str, Any]] | None = None, pubsub: Any = None):
        self._topology = topology
        # Server-Sent Events and the dashboard (ig3.pubsub.local_front): HTTP's way to the pub/sub topics.
        self._pubsub = pubsub
        self._runtime = runtime
        self._authorize = authorize
        self._routes = RouteTable(tuple(r for r in topology.routes if topology.function(r.function).package == "zip"))
        self._llm_app = llm_app
        self._llm_prefixes = llm_prefixes
        self._health = health or (lambda: {"status": "ok"})
        self._openapi: bytes | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/health":
            return await _send_json(send, 200, self._health())
        if path == "/openapi.json" and method in ("GET", "HEAD"):
            return await self._send_openapi(send)
        if self._llm_app is not None and path.startswith(self._llm_prefixes):
            return await self._llm_app(scope, receive, send)
        if self._pubsub is not None and self._pubsub.handles(path):
            return await self._pubsub(scope, receive, send)
        try:
            await self._rest(scope, receive, send, path, method)
        except DomainError as exc:
            await _send_json(send, exc.status, exc.body(), exc.headers)

    async def _send_openapi(self, send: Any) -> None:
        # Built on first request (it imports every request model), then served from memory.
        if self._openapi is None:
            from ig3.api.openapi import build_openapi

            doc = await asyncio.get_running_loop().run_in_executor(None, build_openapi, self._topology)
            self._openapi = orjson.dumps(doc)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(self._openapi)).encode())]})
        await send({"type": "http.response.body", "body": self._openapi})

    async def _rest(self, scope: dict[str, Any], receive: Any, send: Any, path: str, method: str) -> None:
        route, params, path_known = self._routes.match(method, path)
        if route is None:
            if path_known:
                return await _send_json(send, 405, error_body(405, "invalid_request_error",
                                                              f"{method} is not allowed on {path}", "method_not_allowed"))
            raise NotFound(f"no route for {method} {path}", code="unknown_route")
        headers = scope.get("headers", [])
        declared = next((int(v) for k, v in headers if k == b"content-length" and v.isdigit()), 0)
        if declared > MAX_BODY_BYTES:
            await _discard_body(receive, DISCARD_BYTES)
            raise PayloadTooLarge(f"request body exceeds {MAX_BODY_BYTES} bytes")
        body = await _read_body(receive, MAX_BODY_BYTES)
        authorizer_ctx = None
        if route.auth != "none":
            if self._authorize is None:
                raise Unauthorized("no authorizer is configured", code="unauthorized")
            token = _bearer(headers)
            principal = await asyncio.get_running_loop().run_in_executor(None, self._authorize, token, route.auth)
            authorizer_ctx = principal_context(principal)
        event = proxy_event(route=route, method=method, path=path, params=params, headers=headers,
                            query=scope.get("query_string", b"").decode("latin-1"), body=body,
                            client=scope.get("client"), authorizer=authorizer_ctx)
        fn = self._topology.function(route.function)
        future = self._runtime.submit(fn.name, fn.handler, event, timeout_s=fn.timeout_s, memory_mb=fn.memory_mb)
        try:
            response = await asyncio.wrap_future(future)
        except Exception as exc:  # noqa: BLE001 — API Gateway answers 502 when the integration fails
            logger.error("integration failed", extra={"function": fn.name, "error_type": type(exc).__name__})
            return await _send_json(send, 502, error_body(502, "api_error", "the function failed", "bad_gateway"))
        await _send_proxy_response(send, response)


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for k, v in headers:
        if k == b"authorization":
            scheme, _, token = v.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


async def _discard_body(receive: Any, cap: int) -> None:
    """Read and drop a refused body (up to ``cap``) before answering: a server that answers 413 and
    closes while the client is still sending leaves the client with a broken pipe, not the 413."""
    size = 0
    while size <= cap:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        size += len(msg.get("body", b""))
        if not msg.get("more_body"):
            return


async def _read_body(receive: Any, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            if msg.get("more_body"):
                await _discard_body(receive, DISCARD_BYTES)
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not msg.get("more_body"):
            break
    return b"".join(chunks)


async def _send_json(send: Any, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    data = orjson.dumps(body)
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    hdrs += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": data})


async def _send_proxy_response(send: Any, response: dict[str, Any]) -> None:
    if not isinstance(response, dict) or "statusCode" not in response:
        return await _send_json(send, 502, error_body(502, "api_error", "malformed function response", "bad_gateway"))
    body = response.get("body") or ""
    data = base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()
    hdrs: list[tuple[bytes, bytes]] = []
    for k, v in (response.get("headers") or {}).items():
        hdrs.append((k.lower().encode(), str(v).encode()))
    for k, values in (response.get("multiValueHeaders") or {}).items():
        if (response.get("headers") or {}).get(k) is None:
            hdrs += [(k.lower().encode(), str(v).encode()) for v in values]
    hdrs = [h for h in hdrs if h[0] != b"content-length"] + [(b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": int(response["statusCode"]), "headers": hdrs})
    await send({"type": "http.response.body", "body": data})
