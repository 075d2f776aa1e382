"""A Lambda event handler served as an ASGI app, for image functions run by Lambda Web Adapter.

Why: an event-triggered function too heavy for a zip (the cloud worker: LiteLLM is ~225 MB) runs
as a container image. The project's image (``infra/cdk/docker/lambda-web-adapter.Dockerfile``,
Debian bookworm) is the one whose pinned wheels install — the Lambda Python 3.11 base image is
Amazon Linux 2 (glibc 2.26), where some of LiteLLM's dependencies (hf-xet) ship no wheel. Lambda
Web Adapter forwards a non-HTTP event (SQS, ...) as ``POST`` of the raw event JSON to
``AWS_LWA_PASS_THROUGH_PATH`` and returns the app's JSON response to Lambda as the invocation's
result — here, the handler's ``batchItemFailures``.

The handler is the topology's ``module:callable`` in ``IG3_EVENT_HANDLER`` (the same one the
local cloud's pollers call); it runs in a worker thread, one event at a time as Lambda gives them.
``GET /`` answers the adapter's readiness check.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

HANDLER_ENV = "IG3_EVENT_HANDLER"
EVENTS_PATH = "/events"  # Lambda Web Adapter's default AWS_LWA_PASS_THROUGH_PATH
MAX_EVENT_BYTES = 6 * 1024 * 1024  # Lambda's synchronous invocation payload limit


@dataclass
class InvocationContext:
    """What Powertools and handlers read from Lambda's context object, rebuilt from the adapter's
    ``x-amzn-lambda-context`` header (the runtime's context as JSON) and Lambda's environment."""

    function_name: str
    function_version: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    aws_request_id: str
    log_group_name: str
    log_stream_name: str
    deadline_ms: int

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self.deadline_ms - int(time.time() * 1000))

    @classmethod
    def from_header(cls, raw: bytes | None, env: dict[str, str] | None = None) -> InvocationContext:
        env = os.environ if env is None else env
        try:
            data = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        conf = data.get("env_config") if isinstance(data.get("env_config"), dict) else {}
        name = str(conf.get("function_name") or env.get("AWS_LAMBDA_FUNCTION_NAME", "local"))
        return cls(
            function_name=name,
            function_version=str(conf.get("version") or env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")),
            invoked_function_arn=str(data.get("invoked_function_arn") or ""),
            memory_limit_in_mb=int(conf.get("memory") or env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or 0),
            aws_request_id=str(data.get("request_id") or ""),
            log_group_name=str(conf.get("log_group") or env.get("AWS_LAMBDA_LOG_GROUP_NAME", "")),
            log_stream_name=str(conf.get("log_stream") or env.get("AWS_LAMBDA_LOG_STREAM_NAME", "")),
            deadline_ms=int(data.get("deadline") or (time.time() + 900) * 1000),
        )


def _load(spec: str) -> Callable[[dict[str, Any], Any], Any]:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr or "handler")


class EventHandlerApp:
    def __init__(self, handler: Callable[[dict[str, Any], Any], Any] | str | None = None):
        self._spec = handler
        self._handler: Callable[[dict[str, Any], Any], Any] | None = None if isinstance(handler, str | None) \
            else handler

    def handler(self) -> Callable[[dict[str, Any], Any], Any]:
        if self._handler is None:
            spec = self._spec if isinstance(self._spec, str) else os.environ.get(HANDLER_ENV)
            if not spec:
                raise RuntimeError(f"{HANDLER_ENV} names no handler (module:callable)")
            self._handler = _load(spec)
        return self._handler

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/":
            self.handler()  # readiness: the handler module is imported (Lambda's init phase)
            return await _reply(send, 200, {"ok": True})
        if method != "POST" or path != EVENTS_PATH:
            return await _reply(send, 404, {"error": {"type": "not_found", "code": "not_found",
                                                      "message": f"no route {method} {path}"}})
        body = bytearray()
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if len(body) > MAX_EVENT_BYTES:
                return await _reply(send, 413, {"error": {
                    "type": "invalid_request", "code": "event_too_large",
                    "message": "event larger than Lambda's payload limit"}})
            if not msg.get("more_body"):
                break
        try:
            event = orjson.loads(bytes(body))
        except orjson.JSONDecodeError:
            return await _reply(send, 400, {"error": {"type": "invalid_request", "code": "invalid_event",
                                                      "message": "the event is not JSON"}})
        headers = dict(scope.get("headers") or [])
        context = InvocationContext.from_header(headers.get(b"x-amzn-lambda-context"))
        try:
            result = await asyncio.to_thread(self.handler(), event, context)
        except Exception:  # noqa: BLE001 — as the managed runtime: the whole batch comes back
            from ig3.observability import logger

            logger.exception("event handler failed", extra={"request_id": context.aws_request_id})
            records = event.get("Records") if isinstance(event, dict) else None
            if not isinstance(records, list):
                raise
            # Said explicitly: the adapter would hand Lambda a 500 page, which an event source
            # mapping may read as an empty (= successful) answer.
            result = {"batchItemFailures": [{"itemIdentifier": r.get("messageId")} for r in records
                                            if isinstance(r, dict) and r.get("messageId")]}
        await _reply(send, 200, result if result is not None else {})


async def _reply(send: Callable[[dict], Awaitable[None]], status: int, payload: Any) -> None:
    body = orjson.dumps(payload)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


app = EventHandlerApp()
