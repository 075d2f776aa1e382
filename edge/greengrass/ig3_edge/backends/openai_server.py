"""A local OpenAI-compatible server as the engine (llama-server, Ollama, vLLM on the device).

For operators who already run a model server on the M1: the agent keeps the protocol,
limits, signing and heartbeats, and forwards the work over loopback HTTP.

Design decisions:
- Standard library HTTP (``http.client``) with one keep-alive connection per worker thread:
  nothing extra to install on the device, no connection set-up per task.
- Streaming with server-sent events (``stream: true``, ``stream_options.include_usage``);
  ``should_stop`` is checked after every event and the response is closed to cancel.
  Token counts come from the server's usage when it sends them, else one per content event.
- The served models are given in the configuration or read from ``GET /v1/models``.
"""
from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlparse

from ig3.wire import ChatMessage, ModelInfo, TaskLimits
from ig3_edge.backends.base import DeltaSink, Embeddings, Generation, StopCheck, StopStringFilter, TaskError

log = logging.getLogger("ig3_edge.openai_server")


class OpenAIServerBackend:
    name = "openai"

    def __init__(self, base_url: str, *, models: list[str] | None = None, api_key: str | None = None,
                 timeout_s: float = 300.0, embedding_models: list[str] | None = None):
        u = urlparse(base_url.rstrip("/"))
        if u.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL: {base_url!r}")
        self._https = u.scheme == "https"
        self._host = u.hostname or "127.0.0.1"
        self._port = u.port or (443 if self._https else 80)
        self._prefix = u.path if u.path.endswith("/v1") else u.path + "/v1"
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = timeout_s
        self._local = threading.local()
        self._fixed = list(models or [])
        self._embedding = set(embedding_models or [])
        self._models: list[str] = list(self._fixed)

    # -- HTTP -----------------------------------------------------------------------------
    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = self._local.conn = cls(self._host, self._port, timeout=self._timeout)
        return conn

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> http.client.HTTPResponse:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):  # a kept-alive connection the server closed: one fresh retry
            conn = self._conn()
            try:
                conn.request(method, self._prefix + path, body=data, headers=self._headers)
                resp = conn.getresponse()
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise TaskError("backend_unavailable", f"model server unreachable: {exc}", retryable=True) from exc
                continue
            if resp.status >= 400:
                detail = resp.read()[:500].decode("utf-8", "replace")
                code = "bad_task" if resp.status in (400, 422) else "backend_error"
                raise TaskError(code, f"model server answered {resp.status}: {detail}",
                                retryable=resp.status >= 500 or resp.status == 429)
            return resp
        raise AssertionError("unreachable")

    # -- models ---------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        return [ModelInfo(name=m, kinds=["embedding"] if m in self._embedding else ["chat", "completion"])
                for m in self._models]

    def refresh(self) -> bool:
        if self._fixed:
            return False
        try:
            resp = self._request("GET", "/models")
            names = sorted(m["id"] for m in json.loads(resp.read()).get("data", []))
        except (TaskError, ValueError, KeyError) as exc:
            log.warning("could not list the server's models: %s", exc)
            return False
        changed = names != self._models
        self._models = names
        return changed

    def model_hash(self, model: str) -> str | None:
        return None  # the server owns the weights file; it does not tell us its hash

    def warmup(self, model: str) -> None:
        if model in self._embedding:
            self.embed(model, ["Hi"])
        else:
            self.generate(model, messages=None, prompt="Hi", limits=TaskLimits(max_tokens=1),
                          on_delta=lambda _d: None, should_stop=lambda: None)

    # -- work -----------------------------------------------------------------------------
    def generate(self, model: str, *, messages: list[ChatMessage] | None, prompt: str | None,
                 limits: TaskLimits, on_delta: DeltaSink, should_stop: StopCheck) -> Generation:
        t0 = time.perf_counter()
        body: dict[str, Any] = {"model": model, "stream": True, "stream_options": {"include_usage": True},
                                "max_tokens": limits.max_tokens, "temperature": limits.temperature,
                                "top_p": limits.top_p}
        if limits.seed is not None:
            body["seed"] = limits.seed
        if messages is not None:
            body["messages"] = [m.model_dump() for m in messages]
            path = "/chat/completions"
        else:
            body["prompt"] = prompt or ""
            path = "/completions"
        # Stop strings are applied here, not by the server, so they behave like the llama.cpp backend.
        stops = StopStringFilter(list(limits.stop))
        resp = self._request("POST", path, body)
        parts: list[str] = []
        n_events = 0
        ttft_ms = None
        usage: dict[str, Any] = {}
        finish = "length"
        reason = should_stop()
        if reason:
            finish = reason
        try:
            while not reason:
                line = resp.readline()
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                event = json.loads(data)
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") if messages is not None else choice.get("text")
                    if text:
                        n_events += 1
                        if ttft_ms is None:
                            ttft_ms = (time.perf_counter() - t0) * 1000.0
                        out, hit = stops.feed(text)
                        if out:
                            parts.append(out)
                            on_delta(out)
                        if hit:
                            finish, reason = "stop", "stop"
                            break
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                if not reason:
                    reason = should_stop()
                    if reason:
                        finish = reason
        finally:
            if reason:  # cancel: drop the connection so the server stops generating
                resp.close()
                conn = getattr(self._local, "conn", None)
                if conn is not None:
                    conn.close()
                self._local.conn = None
            else:
                resp.read()
        if reason != "stop":  # no stop string was hit: release the held-back text
            tail = stops.flush()
            if tail:
                parts.append(tail)
                on_delta(tail)
        return Generation(text="".join(parts), finish_reason=finish,
                          prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or n_events),
                          ttft_ms=ttft_ms, duration_ms=(time.perf_counter() - t0) * 1000.0)

    def embed(self, model: str, texts: list[str]) -> Embeddings:
        t0 = time.perf_counter()
        resp = self._request("POST", "/embeddings", {"model": model, "input": texts})
        body = json.loads(resp.read())
        rows = sorted(body.get("data", []), key=lambda d: d.get("index", 0))
        return Embeddings(vectors=[[float(x) for x in r["embedding"]] for r in rows],
                          prompt_tokens=int((body.get("usage") or {}).get("prompt_tokens") or 0),
                          duration_ms=(time.perf_counter() - t0) * 1000.0)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
