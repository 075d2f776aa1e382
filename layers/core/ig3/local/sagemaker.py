"""A local SageMaker runtime: ``InvokeEndpoint`` and ``InvokeEndpointWithResponseStream`` for one
endpoint whose container serves the messages (OpenAI chat) API with a real llama.cpp model.

What it speaks, and why it is shaped so:
- **The runtime's REST protocol**, as boto3's ``sagemaker-runtime`` model and LiteLLM's
  ``sagemaker_chat`` provider send it: ``POST /endpoints/{name}/invocations`` (JSON in, the
  container's JSON out) and ``POST /endpoints/{name}/invocations-response-stream`` (an AWS
  event stream — ``application/vnd.amazon.eventstream`` — of ``PayloadPart`` events whose bytes
  are the container's server-sent events, ``data: {chunk}``; a failure after the stream started is
  a ``ModelStreamError`` exception event). Errors before a response are the runtime's own:
  ``ValidationError`` (400, e.g. an unknown endpoint) and ``ModelError`` (424, the container
  answered 4xx/5xx, with ``OriginalStatusCode``/``OriginalMessage``), with ``x-amzn-ErrorType``.
- **The container's messages API** like TGI / LMI containers: the request body is an OpenAI chat
  request (LiteLLM never puts ``stream`` in the body — the path says whether to stream), the
  response a ``chat.completion`` or ``chat.completion.chunk`` objects, the last chunk carrying
  ``usage``.
- **SigV4 is required, not verified**: a request without an ``AWS4-HMAC-SHA256`` authorization
  for service ``sagemaker`` is refused (403) — that catches a client that forgot to sign or signs
  for the wrong service/region; checking the signature itself would only re-run botocore.
- **A real model**: llama.cpp through the edge agent's own backend (``ig3_edge.backends``:
  chat templates from the GGUF, exact token counts, real token streaming), warmed at start so the
  first fallback does not pay the model load. Requests run in server threads, at most ``slots``
  generations at once (one llama.cpp context each).
"""

from __future__ import annotations

import binascii
import re
import struct
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from ig3.observability import logger

PATH_RE = re.compile(
    r"^/endpoints/(?P<name>[A-Za-z0-9](?:-*[A-Za-z0-9]){0,62})/(?P<op>invocations(?:-response-stream)?)$"
)
MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker's request payload limit
VARIANT = "AllTraffic"


# ---------------------------------------------------------------- event-stream framing
def _header(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    return struct.pack(">B", len(n)) + n + struct.pack(">BH", 7, len(v)) + v  # 7: string


def encode_event(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (lengths + CRC), headers, payload, message CRC."""
    raw_headers = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    prelude += struct.pack(">I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + raw_headers + payload
    return message + struct.pack(">I", binascii.crc32(message) & 0xFFFFFFFF)


def payload_part(data: bytes) -> bytes:
    return encode_event(
        {":event-type": "PayloadPart", ":content-type": "application/octet-stream", ":message-type": "event"},
        data,
    )


def model_stream_error(message: str, code: str = "ModelStreamError") -> bytes:
    return encode_event(
        {
            ":exception-type": "ModelStreamError",
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        orjson.dumps({"Message": message, "ErrorCode": code}),
    )


# ---------------------------------------------------------------- the container
class ContainerError(Exception):
    """The model container refused the request (becomes the runtime's ModelError)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[Any]
    limits: Any  # ig3.wire.TaskLimits
    include_usage: bool


class MessagesContainer:
    """The model server inside the endpoint: OpenAI chat requests on llama.cpp models."""

    def __init__(self, models_dir: Path, *, slots: int = 1, threads: int = 1, n_ctx: int = 2048):
        from ig3_edge.backends.llama_cpp import LlamaCppBackend
        from ig3_edge.models import ModelRegistry

        registry = ModelRegistry(Path(models_dir))
        registry.scan()
        self.backend = LlamaCppBackend(registry, slots=slots, n_threads=threads, n_ctx=n_ctx)
        self.models = [m.name for m in registry.all() if "chat" in m.kinds]
        if not self.models:
            raise RuntimeError(f"no chat model (GGUF with a chat template) in {models_dir}")

    def warm(self) -> None:
        for name in self.models:
            self.backend.warmup(name)

    def parse(self, endpoint: str, body: bytes) -> ChatRequest:
        from pydantic import ValidationError

        from ig3.wire import ChatMessage, TaskLimits

        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ContainerError(400, "the request body is not JSON") from None
        if not isinstance(req, dict) or not isinstance(req.get("messages"), list) or not req["messages"]:
            raise ContainerError(400, "messages: a non-empty list is required")
        # LiteLLM names the endpoint as the model unless hf_model_name is set; both mean the default.
        model = req.get("model") or endpoint
        if model == endpoint:
            model = self.models[0]
        if model not in self.models:
            raise ContainerError(
                404, f"model {model!r} is not served by this endpoint (serves {self.models})"
            )
        try:
            messages = [
                ChatMessage(role=m.get("role"), content=_text_content(m.get("content")))
                for m in req["messages"]
            ]
            stop = req.get("stop") or []
            limits = TaskLimits(
                max_tokens=req.get("max_tokens") or req.get("max_completion_tokens") or 256,
                temperature=req.get("temperature", 1.0) if req.get("temperature") is not None else 1.0,
                top_p=req.get("top_p") if req.get("top_p") is not None else 1.0,
                seed=req.get("seed"),
                stop=[stop] if isinstance(stop, str) else list(stop),
            )
        except (ValidationError, AttributeError, TypeError) as exc:
            raise ContainerError(400, f"invalid request: {_first_error(exc)}") from None
        include_usage = bool((req.get("stream_options") or {}).get("include_usage", True))
        return ChatRequest(model, messages, limits, include_usage)

    def generate(self, req: ChatRequest, on_delta) -> Any:
        from ig3_edge.backends.base import TaskError

        try:
            return self.backend.generate(
                req.model,
                messages=req.messages,
                prompt=None,
                limits=req.limits,
                on_delta=on_delta,
                should_stop=lambda: None,
            )
        except TaskError as exc:
            raise ContainerError(400 if not exc.retryable else 503, f"{exc.code}: {exc.message}") from None

    def close(self) -> None:
        self.backend.close()


def _text_content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: text only
        if all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            return "".join(str(p.get("text", "")) for p in content)
    raise TypeError("only text message content is supported")


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(x) for x in first.get('loc', ()))}: {first.get('msg')}"
    return str(exc)


def _completion(req: ChatRequest, gen: Any, rid: str, created: int) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": req.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": gen.text},
                "finish_reason": gen.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(gen),
    }


def _usage(gen: Any) -> dict[str, int]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


def _chunk(
    req: ChatRequest,
    rid: str,
    created: int,
    delta: dict[str, Any],
    finish: str | None = None,
    usage: dict[str, int] | None = None,
) -> bytes:
    body: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": req.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    if usage is not None:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


# ---------------------------------------------------------------- the runtime front
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 — no access log per call
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/ping":  # the container's health route (SageMaker's own health check)
            self._send(200, b"{}", "application/json")
            return
        self._runtime_error(404, "UnknownOperationException", "unknown operation")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._runtime_error(
                413, "ValidationError", f"request payload exceeds {MAX_BODY_BYTES} bytes", close=True
            )
            return
        body = self.rfile.read(length) if length else b""
        match = PATH_RE.match(self.path.split("?", 1)[0])
        if not match:
            self._runtime_error(404, "UnknownOperationException", "unknown operation")
            return
        auth = self.headers.get("Authorization") or ""
        scope = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request", auth)
        if not auth.startswith("AWS4-HMAC-SHA256 ") or not scope:
            self._runtime_error(
                403,
                "MissingAuthenticationTokenException",
                "Missing Authentication Token: requests must be signed (SigV4)",
            )
            return
        if scope.group(2) != "sagemaker" or scope.group(1) != self.server.region:
            self._runtime_error(
                403,
                "InvalidSignatureException",
                f"Credential should be scoped to region '{self.server.region}' and service "
                f"'sagemaker', not '{scope.group(1)}'/'{scope.group(2)}'",
            )
            return
        name = match.group("name")
        if name != self.server.endpoint:
            self._runtime_error(400, "ValidationError", f"Endpoint {name} of account 000000000000 not found.")
            return
        container = self.server.container
        try:
            req = container.parse(name, body)
        except ContainerError as exc:
            self._model_error(exc)
            return
        self.server.count(match.group("op"), body)
        if match.group("op") == "invocations":
            self._invoke(req)
        else:
            self._invoke_stream(req)

    def _invoke(self, req: ChatRequest) -> None:
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        try:
            gen = self.server.container.generate(req, lambda _d: None)
        except ContainerError as exc:
            self._model_error(exc)
            return
        self._send(
            200,
            orjson.dumps(_completion(req, gen, rid, created)),
            "application/json",
            {"X-Amzn-Invoked-Production-Variant": VARIANT},
        )

    def _invoke_stream(self, req: ChatRequest) -> None:
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.amazon.eventstream")
        self.send_header("X-Amzn-SageMaker-Content-Type", "text/event-stream")
        self.send_header("X-Amzn-Invoked-Production-Variant", VARIANT)
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._write_chunk(payload_part(_chunk(req, rid, created, {"role": "assistant", "content": ""})))
        try:
            gen = self.server.container.generate(
                req,
                lambda text: self._write_chunk(payload_part(_chunk(req, rid, created, {"content": text}))),
            )
            self._write_chunk(
                payload_part(
                    _chunk(
                        req, rid, created, {}, gen.finish_reason, _usage(gen) if req.include_usage else None
                    )
                )
            )
            self._write_chunk(payload_part(b"data: [DONE]\n\n"))
        except ContainerError as exc:
            self._write_chunk(model_stream_error(exc.message))
        except OSError:  # the client went away: nothing left to tell it
            self.close_connection = True
            return
        self._write_chunk(b"")  # end of the chunked body

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _model_error(self, exc: ContainerError) -> None:
        body = {
            "message": f'Received client error ({exc.status}) from primary with message "{exc.message}". '
            f"See the endpoint's logs for more information.",
            "OriginalStatusCode": exc.status,
            "OriginalMessage": exc.message,
            "LogStreamArn": f"arn:aws:logs:{self.server.region}:000000000000:log-group:"
            f"/aws/sagemaker/Endpoints/{self.server.endpoint}",
        }
        self._send(424, orjson.dumps(body), "application/json", {"x-amzn-ErrorType": "ModelError:"})

    def _runtime_error(self, status: int, error_type: str, message: str, *, close: bool = False) -> None:
        if close:
            self.close_connection = True
        self._send(
            status,
            orjson.dumps({"message": message}),
            "application/json",
            {"x-amzn-ErrorType": f"{error_type}:"},
        )

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], endpoint: str, region: str, container: MessagesContainer):
        super().__init__(addr, _Handler)
        self.endpoint, self.region, self.container = endpoint, region, container
        self.invocations = {"invocations": 0, "invocations-response-stream": 0}
        # The last requests' shape (operation, body keys, model): what clients really send. No content.
        self.recent: deque[dict[str, Any]] = deque(maxlen=32)
        self._lock = threading.Lock()

    def count(self, op: str, body: bytes) -> None:
        doc = orjson.loads(body)
        with self._lock:
            self.invocations[op] += 1
            self.recent.append({"op": op, "keys": sorted(doc), "model": doc.get("model")})


class LocalSageMakerEndpoint:
    """The runtime front for one endpoint, in a thread. ``url`` is what
    ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` points at."""

    def __init__(
        self,
        models_dir: Path,
        *,
        endpoint: str = "ig3-local-fallback",
        region: str = "us-east-1",
        host: str = "127.0.0.1",
        port: int = 0,
        slots: int = 1,
        threads: int = 1,
        warm: bool = True,
    ):
        self.endpoint = endpoint
        self.region = region
        self.container = MessagesContainer(models_dir, slots=slots, threads=threads)
        t0 = time.perf_counter()
        if warm:
            self.container.warm()
        logger.info(
            "local SageMaker endpoint ready",
            extra={
                "endpoint": endpoint,
                "models": self.container.models,
                "warm_ms": round((time.perf_counter() - t0) * 1000),
            },
        )
        self._server = _Server((host, port), endpoint, region, self.container)
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sagemaker-runtime", daemon=True
        )
        self._thread.start()

    @property
    def models(self) -> list[str]:
        return list(self.container.models)

    @property
    def invocations(self) -> dict[str, int]:
        return dict(self._server.invocations)

    @property
    def recent_requests(self) -> list[dict[str, Any]]:
        return list(self._server.recent)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.container.close()
