"""The cloud path: our pooled aiohttp client for OpenAI-compatible upstreams, LiteLLM for the rest.

Why our own client: the request budget is 0.75 ms of CPU; httpx's pool (what the openai SDK and
LiteLLM use) costs ~5 ms CPU per request at 64 concurrent requests here, aiohttp's ~0.1 ms. One
``ClientSession`` per process, keep-alive, bytes in and out, JSON parsed once.

Within a model group the deployments are tried least-busy first; a connection failure, a
timeout before the response starts, 429 or 5xx moves to the next deployment (nothing was sent
to the client yet). Once a stream has started, an upstream failure ends it with an error event.

LiteLLM (``import litellm`` on first use only: ~2.4 s and a large heap) adapts providers that do
not speak the OpenAI API — Bedrock, Anthropic, ``sagemaker_chat`` — with its Router's
retries and fallbacks (``router_settings`` of the config).
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ig3.errors import DomainError
from ig3.llm.config import Deployment, GatewayConfig
from ig3.log import logger

PATHS = {"chat": "/chat/completions", "completion": "/completions", "embedding": "/embeddings"}
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class UpstreamError(DomainError):
    """An upstream's error, relayed with its status and OpenAI error type."""

    def __init__(self, status: int, message: str, *, type_: str = "upstream_error", code: str = "upstream_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message, code=code, headers=headers)
        self.status = status
        self.type = type_


def _upstream_error(status: int, raw: bytes) -> UpstreamError:
    try:
        err = orjson.loads(raw).get("error") or {}
        if isinstance(err, str):
            err = {"message": err}
    except Exception:  # noqa: BLE001 — not JSON
        err = {}
    message = str(err.get("message") or f"upstream answered {status}")[:500]
    if status >= 500:
        return UpstreamError(502, f"upstream error: {message}", type_="upstream_error", code="upstream_error")
    return UpstreamError(status, message, type_=str(err.get("type") or "invalid_request_error"),
                         code=str(err.get("code") or "upstream_rejected"))


class OpenAIUpstreams:
    """One pooled aiohttp session for every OpenAI-compatible deployment."""

    def __init__(self, *, connect_timeout_s: float = 5.0, read_timeout_s: float = 600.0, pool_limit: int = 0):
        self._session: Any = None
        self._connect_timeout = connect_timeout_s
        self._read_timeout = read_timeout_s
        self._pool_limit = pool_limit  # 0: unbounded (one keep-alive connection per concurrent request)
        self._busy: dict[int, int] = {}

    def _get_session(self) -> Any:
        if self._session is None or self._session.closed:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_limit, limit_per_host=0, keepalive_timeout=60,
                                               ttl_dns_cache=300, enable_cleanup_closed=True),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout,
                                              sock_read=self._read_timeout),
                json_serialize=lambda o: orjson.dumps(o).decode(), auto_decompress=True, skip_auto_headers=("User-Agent",))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _ordered(self, deployments: tuple[Deployment, ...]) -> list[Deployment]:
        if len(deployments) == 1:
            return list(deployments)
        return sorted(deployments, key=lambda d: self._busy.get(id(d), 0))

    async def _open(self, kind: str, deployments: tuple[Deployment, ...], body: dict[str, Any]) -> tuple[Any, Deployment]:
        """POST to the first deployment that answers 2xx; returns the open response."""
        import aiohttp

        session = self._get_session()
        last: Exception | None = None
        for d in self._ordered(deployments):
            payload = orjson.dumps({**body, "model": d.upstream_model})
            headers = {"Content-Type": "application/json"}
            if d.api_key:
                headers["Authorization"] = f"Bearer {d.api_key}"
            try:
                resp = await session.post(f"{d.api_base}{PATHS[kind]}", data=payload, headers=headers)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                logger.warning("upstream unreachable", extra={"model": d.model_name, "error_type": type(exc).__name__})
                last = UpstreamError(502, f"upstream {d.model_name} unreachable", code="upstream_unreachable")
                continue
            if resp.status < 300:
                return resp, d
            raw = await resp.read()
            resp.release()
            last = _upstream_error(resp.status, raw)
            if resp.status not in RETRYABLE_STATUS:
                raise last
        raise last or UpstreamError(502, "no deployment available", code="upstream_unreachable")

    async def complete(self, kind: str, deployments: tuple[Deployment, ...], body: dict[str, Any]) -> dict[str, Any]:
        resp, d = await self._open(kind, deployments, body)
        self._busy[id(d)] = self._busy.get(id(d), 0) + 1
        try:
            raw = await resp.read()
        finally:
            self._busy[id(d)] -= 1
            resp.release()
        out = orjson.loads(raw)
        out["model"] = d.model_name
        return out

    async def stream(self, kind: str, deployments: tuple[Deployment, ...], body: dict[str, Any]
                     ) -> AsyncIterator[dict[str, Any]]:
        """Opens the upstream stream (errors raise here, before any byte is sent) and returns chunks."""
        body = {**body, "stream": True, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
        resp, d = await self._open(kind, deployments, body)
        return self._chunks(resp, d)

    async def _chunks(self, resp: Any, d: Deployment) -> AsyncIterator[dict[str, Any]]:
        self._busy[id(d)] = self._busy.get(id(d), 0) + 1
        try:
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                if not data:
                    continue
                chunk = orjson.loads(data)
                if "error" in chunk and "choices" not in chunk:
                    raise UpstreamError(502, str((chunk["error"] or {}).get("message", "upstream stream error"))[:500])
                chunk["model"] = d.model_name
                yield chunk
        finally:
            self._busy[id(d)] -= 1
            resp.release()


class LiteLLMBackend:
    """LiteLLM's Router over the whole ``model_list`` (so its fallbacks may cross providers)."""

    def __init__(self, config: GatewayConfig):
        self._config = config
        self._router: Any = None
        self._loading: asyncio.Future | None = None

    async def router(self) -> Any:
        """The Router, importing LiteLLM in a worker thread on first use: the import takes seconds
        of CPU and must not stall the event loop serving every other request meanwhile."""
        if self._router is not None:
            return self._router
        if self._loading is None:
            self._loading = asyncio.ensure_future(asyncio.to_thread(self._get_router))
        try:
            return await asyncio.shield(self._loading)
        except Exception:
            self._loading = None  # let a later request try again
            raise

    def _get_router(self) -> Any:
        if self._router is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-list fetch at import
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            if region:
                os.environ.setdefault("AWS_REGION_NAME", region)
            import litellm  # lazy: only the first request to a non-OpenAI provider pays for it

            litellm.telemetry = False
            for k, v in self._config.litellm_settings.items():
                setattr(litellm, k, v)
            settings = {k: v for k, v in self._config.router_settings.items()
                        if k in ("num_retries", "fallbacks", "timeout", "routing_strategy", "retry_after",
                                 "allowed_fails", "cooldown_time", "context_window_fallbacks")}
            self._router = litellm.Router(model_list=[dict(e) for e in self._config.model_list], **settings)
        return self._router

    @staticmethod
    def _map_error(exc: Exception) -> DomainError:
        status = int(getattr(exc, "status_code", 0) or 502)
        message = str(getattr(exc, "message", "") or exc)[:500]
        if status >= 500:
            return UpstreamError(502, f"upstream error: {message}")
        return UpstreamError(status, message, type_="invalid_request_error", code="upstream_rejected")

    async def complete(self, kind: str, group: str, body: dict[str, Any]) -> dict[str, Any]:
        router = await self.router()
        params = {k: v for k, v in body.items() if k not in ("model", "stream", "stream_options")}
        try:
            if kind == "chat":
                resp = await router.acompletion(model=group, **params)
            elif kind == "completion":
                resp = await router.atext_completion(model=group, **params)
            else:
                resp = await router.aembedding(model=group, **params)
        except DomainError:
            raise
        except Exception as exc:  # noqa: BLE001 — LiteLLM's exception zoo -> one upstream error
            raise self._map_error(exc) from None
        out = resp.model_dump() if hasattr(resp, "model_dump") else dict(resp)
        out["model"] = group
        return out

    async def stream(self, kind: str, group: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        router = await self.router()
        params = {k: v for k, v in body.items() if k not in ("model", "stream", "stream_options")}
        params["stream_options"] = {"include_usage": True}
        try:
            if kind == "chat":
                it = await router.acompletion(model=group, stream=True, **params)
            else:
                it = await router.atext_completion(model=group, stream=True, **params)
        except Exception as exc:  # noqa: BLE001
            raise self._map_error(exc) from None
        return self._relay(it, group)

    async def _relay(self, it: Any, group: str) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in it:
                out = chunk.model_dump(exclude_none=True) if hasattr(chunk, "model_dump") else dict(chunk)
                out["model"] = group
                yield out
        except Exception as exc:  # noqa: BLE001
            raise self._map_error(exc) from None
