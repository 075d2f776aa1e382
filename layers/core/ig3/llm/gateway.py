"""The LLM Gateway's request pipeline: auth -> parse -> route -> admit (limits + cache) -> serve.

Per request, on the hot path: one auth-cache lookup, one orjson parse + one pydantic validation,
a pure routing decision over an in-memory capacity snapshot, ONE Redis round trip (the
admission script: both limit scopes and the cache read), and the upstream call through the
pooled client. Everything else — cache fills, tpm corrections, usage events — is write-behind,
batched by background tasks. That is how the path stays inside 0.75 ms of CPU.

Streams: the HTTP status and headers are sent only once the first chunk exists, so anything
that fails before the first byte (upstream refusal, no device, an edge attempt that died and was
retried) still becomes a proper HTTP error or is retried invisibly. After the first byte:
- cloud: an upstream failure ends the stream with an ``error`` event;
- edge: **a device that dies mid-stream ends the stream with an error event** (code
  ``device_lost``); we do not splice the retried attempt's output onto the partial answer (it
  would not be the same text). The task itself is retried by the AI gateway as usual. Before the
  first byte, a retried attempt simply takes over.
Exact usage: the upstream's own counts — we force ``stream_options.include_usage`` upstream and
drop the usage chunk again when the client did not ask for it; edge counts come from the
device's final chunk / the verified result.
"""
from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from ig3.errors import BadRequest, DomainError, PayloadTooLarge, TooManyRequests, validation_message
from ig3.llm import openai_shapes as shapes
from ig3.llm.admission import (ADMIT_LUA, WINDOW_MS, Admission, LocalLimiter, Scope, cache_key, cacheable,
                               parse_admission, scope_keys)
from ig3.llm.cloud import LiteLLMBackend, OpenAIUpstreams, UpstreamError
from ig3.llm.config import GatewayConfig
from ig3.llm.edge import EdgeBackend, EdgeCatalogue, EdgeJob, EdgeRun, Terminal
from ig3.llm.models import REQUEST_MODELS, estimate_tokens, non_latin_share
from ig3.llm.redisguard import RedisGuard, RedisUnavailable
from ig3.llm.routing import DEFAULT_OUTPUT_TOKENS, Decision, Features, Router
from ig3.llm.spend import CloudSpend, Reservation
from ig3.llm.usage import UsageRecorder
from ig3.log import logger

MAX_BODY_BYTES = 4 * 1024 * 1024
Authorize = Callable[[str | None], Awaitable[Any]]  # header value -> Principal (raises 401/403)


class GatewayTimeout(DomainError):
    status, type, code = 504, "timeout", "timeout"


class EdgeFailed(DomainError):
    status, type, code = 502, "upstream_error", "edge_failed"


@dataclass
class Limits:
    """Default per-key and per-wallet limits (0 = unlimited); a key's own limits win."""

    key_rpm: int = 600
    key_tpm: int = 1_000_000
    wallet_rpm: int = 3_000
    wallet_tpm: int = 5_000_000

    @classmethod
    def from_env(cls) -> Limits:
        e = os.environ.get
        return cls(int(e("IG3_LLM_KEY_RPM", "600")), int(e("IG3_LLM_KEY_TPM", "1000000")),
                   int(e("IG3_LLM_WALLET_RPM", "3000")), int(e("IG3_LLM_WALLET_TPM", "5000000")))


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None


@dataclass
class Ctx:
    request_id: str
    kind: str
    principal: Any
    requested_model: str
    decision: Decision
    t0: float
    scopes: list[Scope]
    cost: int
    window: int = 0
    cache_key: str | None = None
    include_usage: bool = False
    degraded: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    recorded: bool = False
    task_id: str | None = None  # edge: the AI-gateway task serving it
    reservation: Reservation | None = None  # cloud: the worst case reserved before the upstream call


class Gateway:
    def __init__(self, *, config: GatewayConfig, authorize: Authorize, redis: RedisGuard,
                 catalogue: EdgeCatalogue, usage: UsageRecorder, edge: EdgeBackend | None = None,
                 upstreams: OpenAIUpstreams | None = None, litellm: LiteLLMBackend | None = None,
                 limits: Limits | None = None, key_prefix: str = "ig3:llm:", cache_ttl_s: int = 3600,
                 edge_deadline_s: float = 60.0, rag: Any | None = None, spend: CloudSpend | None = None):
        self.config = config
        # Cloud requests reserve their worst-case cost before the upstream call (None: not billed
        # here). Edge requests are held by the AI gateway's TaskService, cache hits cost no work.
        self.spend = spend
        self.rag = rag  # ig3.rag.chat.ChatRetriever: the chat "rag" extension (None: not offered)
        self.router = Router(config)
        self.authorize = authorize
        self.redis = redis
        self.catalogue = catalogue
        self.usage = usage
        self.edge = edge
        self.upstreams = upstreams or OpenAIUpstreams()
        self.litellm = litellm or LiteLLMBackend(config)
        self.limits = limits or Limits()
        self.local_limiter = LocalLimiter()
        self.prefix = key_prefix
        self.cache_ttl_ms = cache_ttl_s * 1000
        self.edge_deadline_s = edge_deadline_s

    # ------------------------------------------------------------------------------ entry point
    async def handle(self, kind: str, raw: bytes, headers: dict[str, str]) -> Reply:
        t0 = time.perf_counter()
        principal = await self.authorize(headers.get("authorization"))
        if len(raw) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"request body exceeds {MAX_BODY_BYTES} bytes")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest("We could not parse the JSON body of your request.", code="invalid_json") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object", code="invalid_json")
        rag = None
        if kind == "chat" and "rag" in body:
            from ig3.rag.chat import apply_rag  # only on RAG requests

            body, rag = await apply_rag(self.rag, principal, body)
        try:
            req = REQUEST_MODELS[kind].model_validate(body)
        except ValidationError as exc:
            raise BadRequest(validation_message(exc), code="invalid_request") from None

        text = req.prompt_text()
        prompt_est = estimate_tokens(text)
        budget = None if kind == "embedding" else req.output_budget()
        slo = headers.get("x-ig3-slo-ms")
        try:
            slo_ms = float(slo) if slo else None
        except ValueError:
            raise BadRequest("x-ig3-slo-ms must be a number of milliseconds", code="invalid_header") from None
        features = Features(
            kind=kind, prompt_tokens=prompt_est, max_tokens=budget,
            structured=kind != "embedding" and req.needs_structured_output(),
            n=getattr(req, "n", 1), text_only=all(m.text_only() for m in req.messages) if kind == "chat" else
            (kind != "embedding" or req.texts() is not None),
            non_latin=non_latin_share(text), urgency=(headers.get("x-ig3-urgency") or "normal").lower(), slo_ms=slo_ms)
        decision = self.router.decide(req.model, features, self.catalogue.snapshot())

        wallet = principal.subject
        key_id = getattr(principal, "key_id", None)
        key_scope, wallet_scope = scope_keys(self.prefix, wallet, key_id)
        scopes = [Scope(key_scope, getattr(principal, "rpm_limit", None) or self.limits.key_rpm,
                        getattr(principal, "tpm_limit", None) or self.limits.key_tpm, "key"),
                  Scope(wallet_scope, self.limits.wallet_rpm, self.limits.wallet_tpm, "wallet")]
        cost = prompt_est + (0 if kind == "embedding" else (budget or DEFAULT_OUTPUT_TOKENS)) * getattr(req, "n", 1)
        ckey = cache_key(self.prefix, wallet, kind, body) if cacheable(kind, body) else None
        # Always our own id, never the client's x-request-id: it is billing's exactly-once key, and a
        # client-chosen one could make distinct requests settle as one.
        ctx = Ctx(request_id=f"req_{uuid.uuid4().hex}", kind=kind,
                  principal=principal, requested_model=req.model, decision=decision, t0=t0, scopes=scopes,
                  cost=cost, cache_key=ckey, include_usage=getattr(req, "include_usage", False))

        adm = await self._admit(scopes, cost, ckey)
        ctx.window, ctx.degraded = adm.window, adm.degraded
        ctx.headers = self._headers(ctx, adm)
        if not adm.allowed:
            if adm.too_large:
                raise TooManyRequests(f"Request too large for the {adm.limit} limit: {cost} tokens requested",
                                      code="request_too_large", headers=ctx.headers)
            retry_s = max(1, math.ceil(adm.retry_after_ms / 1000))
            raise TooManyRequests(f"Rate limit reached ({adm.limit}). Try again in {retry_s} s.",
                                  code="rate_limit_exceeded",
                                  headers={**ctx.headers, "retry-after": str(retry_s),
                                           "retry-after-ms": str(adm.retry_after_ms)})
        stream = bool(getattr(req, "stream", False))
        if adm.cached is not None:
            reply = self._from_cache(ctx, adm.cached, stream)
        elif decision.route == "edge":
            if self.edge is None:
                raise UpstreamError(503, "the edge path is not configured", type_="service_unavailable",
                                    code="no_edge")
            reply = await (self._edge_stream(ctx, req) if stream else self._edge_complete(ctx, req))
        else:
            if self.spend is not None:
                await self._reserve(ctx, req, text)
            try:
                reply = await (self._cloud_stream(ctx, body) if stream else self._cloud_complete(ctx, body))
            except BaseException:
                if ctx.reservation is not None:  # failed before any output: free it, bill nothing
                    self._finish(ctx, prompt=0, completion=0, status="error")
                raise
        if rag is not None:
            rag.attach(reply)  # the sources used: a "rag" field in the JSON body, a header on streams
        return reply

    def _headers(self, ctx: Ctx, adm: Admission) -> dict[str, str]:
        d = ctx.decision
        h = {"x-request-id": ctx.request_id, "x-ig3-route": d.route, "x-ig3-route-reason": d.reason,
             "x-ig3-model": d.model,
             "x-ig3-cache": "skip" if ctx.cache_key is None else ("hit" if adm.cached is not None else "miss")}
        if d.route == "cloud" and d.deployments:
            h["x-ig3-endpoint"] = d.deployments[0].provider + "/" + d.deployments[0].upstream_model
        if adm.degraded:
            h["x-ig3-degraded"] = "redis"
        return h

    # ----------------------------------------------------------------------------------- spend
    def worst_case(self, kind: str, req: Any, text: str, model: str) -> int:
        """The most a cloud request can cost: a prompt-token upper bound + every output token it allows."""
        from ig3.billing.models import prompt_token_bound

        assert self.spend is not None
        prompt = prompt_token_bound(len(text))
        if kind == "chat":
            prompt += 8 * len(req.messages)  # per-message template tokens
        elif kind == "embedding" and req.texts() is None:
            ids = req.input
            prompt += len(ids) if ids and isinstance(ids[0], int) else sum(len(x) for x in ids)
        outputs = 0
        if kind != "embedding":
            outputs = (req.output_budget() or self.spend.default_output_tokens) * (getattr(req, "n", None) or 1)
            if kind == "completion" and isinstance(req.prompt, list):
                outputs *= len(req.prompt)
        return self.spend.estimate(model, kind, prompt, outputs)

    async def _reserve(self, ctx: Ctx, req: Any, text: str) -> None:
        assert self.spend is not None
        amount = self.worst_case(ctx.kind, req, text, ctx.decision.model)
        p = ctx.principal
        ctx.reservation = await self.spend.reserve(p.subject, ctx.request_id, amount,
                                                   key_id=getattr(p, "key_id", None),
                                                   key_budget=getattr(p, "budget", None))

    # ------------------------------------------------------------------------------- admission
    async def _admit(self, scopes: list[Scope], cost: int, ckey: str | None) -> Admission:
        keys = [s.key for s in scopes] + ([ckey] if ckey else [])
        args: list[Any] = [WINDOW_MS, cost, len(scopes)]
        for s in scopes:
            args += [s.rpm, s.tpm]
        try:
            raw = await self.redis.eval_script(ADMIT_LUA, keys, args)
        except RedisUnavailable:
            return self.local_limiter.admit(scopes, cost)
        return parse_admission(raw, scopes)

    # ----------------------------------------------------------------------------- completion
    def _finish(self, ctx: Ctx, *, prompt: int, completion: int, status: str, route: str | None = None,
                device: str | None = None, model: str | None = None, response: dict[str, Any] | None = None) -> None:
        """Usage event, tpm correction and cache fill — all write-behind, never awaited.

        The event follows the billing contract (``ig3.billing.models.UsageRecorded``): status
        ``completed`` (settle) or ``failed`` (release the hold, no charge). A stream the client
        closed early is ``completed`` with the tokens produced so far (``partial``). A cache hit is
        ``completed`` with zero tokens — no device or provider did any work — and carries the cached
        counts for pricing (``cached_prompt_tokens``/``cached_completion_tokens``).

        Requests served through the AI gateway (edge, or its SageMaker fallback: ``ctx.task_id``)
        publish no usage event here: the TaskService's event for the task is the one record of that
        work (the route it really ran on, SageMaker time, the device; held and settled under the task
        id). A second event under the same id used to race it, and whichever came first was billed —
        a cloud fallback at the edge price, or a gateway timeout's ``failed`` releasing a task that
        then completed (found by ``make chaos``).
        """
        if ctx.recorded:
            return
        ctx.recorded = True
        duration_ms = int(round((time.perf_counter() - ctx.t0) * 1000))
        detail: dict[str, Any] = {
            "request_id": ctx.task_id or ctx.request_id, "account": ctx.principal.subject,
            "model": model or ctx.decision.model, "route": route or ctx.decision.route, "kind": ctx.kind,
            "prompt_tokens": int(prompt), "completion_tokens": int(completion), "duration_ms": duration_ms,
            "status": "failed" if status == "error" else "completed", "gateway_request_id": ctx.request_id}
        if status == "client_closed":
            detail["partial"] = True
        elif status == "cache_hit":
            detail.update(prompt_tokens=0, completion_tokens=0, cache="hit", cached_prompt_tokens=int(prompt),
                          cached_completion_tokens=int(completion))
        key_id = getattr(ctx.principal, "key_id", None)
        if key_id:
            detail["key_id"] = key_id
            if getattr(ctx.principal, "budget", None) is not None:
                detail["key_budget"] = ctx.principal.budget  # spend without a hold counts against it too
        if device:
            detail["device"] = device
        res = ctx.reservation
        if res is not None and self.spend is not None:
            detail.update(res.event_fields())
            charge = 0
            if detail["status"] == "completed":
                try:  # the billing function prices the same event with the same book
                    charge = self.spend.cost(detail["model"], ctx.kind, detail["prompt_tokens"],
                                             detail["completion_tokens"])
                except Exception:  # noqa: BLE001 — unpriceable: keep the whole reservation until settled
                    charge = res.amount
            self.spend.settle_soon(res, charge)
        if ctx.task_id is None:
            self.usage.record(detail)
        delta = int(prompt) + int(completion) - ctx.cost
        if delta and ctx.window:
            if ctx.degraded:
                self.local_limiter.correct(ctx.scopes, ctx.window, delta)
            else:
                for s in ctx.scopes:
                    self.redis.write_behind("HINCRBY", s.key, f"{ctx.window}:t", delta)
        if response is not None and ctx.cache_key and status == "ok" and not ctx.degraded:
            entry = {"r": response, "route": route or ctx.decision.route, "device": device}
            self.redis.write_behind("SET", ctx.cache_key, orjson.dumps(entry), "PX", self.cache_ttl_ms)

    def _json(self, ctx: Ctx, obj: dict[str, Any]) -> Reply:
        return Reply(200, {**ctx.headers, "content-type": "application/json"}, body=orjson.dumps(obj))

    def _sse_reply(self, ctx: Ctx, gen: AsyncIterator[bytes]) -> Reply:
        return Reply(200, ctx.headers, stream=gen)

    def _from_cache(self, ctx: Ctx, raw: bytes, stream: bool) -> Reply:
        entry = orjson.loads(raw)
        resp = entry["r"]
        if ctx.kind != "embedding":
            resp["id"] = ctx.request_id  # a new response, the same content
        u = resp.get("usage") or {}
        self._finish(ctx, prompt=u.get("prompt_tokens", 0), completion=u.get("completion_tokens", 0),
                     status="cache_hit", route=entry.get("route"), device=entry.get("device"), model=resp.get("model"))
        if not stream:
            return self._json(ctx, resp)

        async def gen() -> AsyncIterator[bytes]:
            for chunk in shapes.replay_chunks(resp, ctx.kind, ctx.include_usage):
                yield shapes.sse(chunk)
            yield shapes.SSE_DONE

        return self._sse_reply(ctx, gen())

    # ----------------------------------------------------------------------------------- cloud
    def _cloud_targets(self, group: str) -> list[tuple[str, Any]]:
        """The group, then its configured fallback groups (``router_settings.fallbacks``)."""
        order = [group]
        for fb in self.config.router_settings.get("fallbacks") or []:
            if isinstance(fb, dict) and group in fb:
                order += [g for g in fb[group] if g in self.config.groups]
        return [(g, self.config.groups[g]) for g in order]

    def _deployments(self, ctx: Ctx, group: str, deployments: tuple) -> tuple:
        usable = tuple(d for d in deployments if ctx.kind in d.kinds)
        return usable or deployments

    async def _cloud_complete(self, ctx: Ctx, body: dict[str, Any]) -> Reply:
        group = ctx.decision.model
        deployments = ctx.decision.deployments
        if all(d.direct for d in deployments):
            last: Exception | None = None
            for name, deps in self._cloud_targets(group):
                deps = self._deployments(ctx, name, deps) if name != group else deployments
                if not all(d.direct for d in deps):
                    out = await self.litellm.complete(ctx.kind, name, body)
                    break
                try:
                    out = await self.upstreams.complete(ctx.kind, deps, body)
                    break
                except UpstreamError as exc:
                    last = exc
                    if exc.status < 500 and exc.status != 429:
                        raise
            else:
                assert last is not None
                raise last
        else:
            out = await self.litellm.complete(ctx.kind, group, body)
        u = out.get("usage") or {}
        self._finish(ctx, prompt=u.get("prompt_tokens", 0), completion=u.get("completion_tokens", 0), status="ok",
                     model=out.get("model"), response=out)
        return self._json(ctx, out)

    async def _cloud_stream(self, ctx: Ctx, body: dict[str, Any]) -> Reply:
        group = ctx.decision.model
        deployments = ctx.decision.deployments
        if all(d.direct for d in deployments):
            chunks = None
            last: Exception | None = None
            for name, deps in self._cloud_targets(group):
                deps = self._deployments(ctx, name, deps) if name != group else deployments
                try:
                    chunks = (await self.upstreams.stream(ctx.kind, deps, body)) if all(d.direct for d in deps) \
                        else (await self.litellm.stream(ctx.kind, name, body))
                    break
                except UpstreamError as exc:
                    last = exc
                    if exc.status < 500 and exc.status != 429:
                        raise
            if chunks is None:
                assert last is not None
                raise last
        else:
            chunks = await self.litellm.stream(ctx.kind, group, body)
        return self._sse_reply(ctx, self._relay_cloud(ctx, chunks))

    async def _relay_cloud(self, ctx: Ctx, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
        asm = shapes.StreamAssembler(ctx.kind)
        status = "client_closed"
        try:
            async for chunk in chunks:
                asm.add(chunk)
                if not chunk.get("choices") and chunk.get("usage"):
                    if ctx.include_usage:
                        yield shapes.sse(chunk)
                    continue
                if not ctx.include_usage:
                    chunk.pop("usage", None)
                yield shapes.sse(chunk)
            status = "ok"
            yield shapes.SSE_DONE
        except DomainError as exc:
            status = "error"
            yield shapes.sse({"error": exc.body()["error"]})
        except Exception as exc:  # noqa: BLE001 — the stream has begun: end it with an error event
            status = "error"
            logger.warning("cloud stream failed", extra={"error_type": type(exc).__name__})
            yield shapes.sse_error("the upstream stream failed", "upstream_error")
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()  # releases the upstream connection now, not at garbage collection
            u = asm.usage or {}
            if not u and status != "ok":
                u = {"completion_tokens": sum(len(t) for t in asm.texts.values())}  # chunks seen: best known
            self._finish(ctx, prompt=u.get("prompt_tokens", 0), completion=u.get("completion_tokens", 0),
                         status=status, model=(asm.first or {}).get("model"),
                         response=asm.response() if status == "ok" else None)

    # ------------------------------------------------------------------------------------ edge
    def _edge_job(self, ctx: Ctx, req: Any, stream: bool) -> EdgeJob:
        from ig3.wire import ChatMessage, TaskInput, TaskLimits

        if ctx.kind == "chat":
            role_map = {"developer": "system", "function": "tool"}
            inp = TaskInput(messages=[ChatMessage(role=role_map.get(m.role, m.role), content=m.text())
                                      for m in req.messages])
        elif ctx.kind == "completion":
            if isinstance(req.prompt, list) and len(req.prompt) != 1:
                raise BadRequest("edge models take one prompt per request", code="unsupported_on_edge")
            inp = TaskInput(prompt=req.prompt if isinstance(req.prompt, str) else req.prompt[0])
        else:
            inp = TaskInput(texts=req.texts())
        limits = TaskLimits() if ctx.kind == "embedding" else TaskLimits(
            max_tokens=min(req.output_budget() or DEFAULT_OUTPUT_TOKENS, 32768),
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=req.top_p or 1.0, seed=req.seed, stop=req.stop_list())
        return EdgeJob(request_id=ctx.request_id, account=ctx.principal.subject, kind=ctx.kind,
                       model=ctx.decision.model, input=inp, limits=limits, stream=stream,
                       deadline_s=self.edge_deadline_s, key_id=getattr(ctx.principal, "key_id", None),
                       key_budget=getattr(ctx.principal, "budget", None))

    async def _edge_start(self, ctx: Ctx, job: EdgeJob) -> EdgeRun:
        assert self.edge is not None
        try:
            run = await self.edge.start(job)
        except DomainError:
            raise
        except ConnectionError as exc:
            raise UpstreamError(503, f"edge path unavailable: {exc}", type_="service_unavailable",
                                code="edge_unavailable") from None
        ctx.headers["x-ig3-task"] = run.task_id
        ctx.task_id = run.task_id
        if run.device:
            ctx.headers["x-ig3-device"] = run.device
        return run

    async def _edge_complete(self, ctx: Ctx, req: Any) -> Reply:
        run = await self._edge_start(ctx, self._edge_job(ctx, req, stream=False))
        deadline = time.monotonic() + self.edge_deadline_s
        try:
            terminal: Terminal | None = None
            async for ev in run.events():
                if ev.terminal is not None:
                    terminal = ev.terminal
                    break
                if time.monotonic() > deadline:
                    break
            if terminal is None:
                raise GatewayTimeout("the edge task did not finish in time", code="edge_timeout")
            if terminal.status != "COMPLETED":
                raise EdgeFailed(f"the edge task failed: {terminal.error_code or 'unknown'}",
                                 code=terminal.error_code or "edge_failed")
        finally:
            await run.close()
        if terminal.device:
            ctx.headers["x-ig3-device"] = terminal.device
        p, c = terminal.prompt_tokens, terminal.completion_tokens
        model = ctx.decision.model
        if ctx.kind == "chat":
            out = shapes.chat_completion(ctx.request_id, model, terminal.text or "", terminal.finish_reason, p, c)
        elif ctx.kind == "completion":
            out = shapes.text_completion(ctx.request_id, model, terminal.text or "", terminal.finish_reason, p, c)
        else:
            out = shapes.embeddings(model, terminal.embeddings or [], p)
        self._finish(ctx, prompt=p, completion=c, status="ok", route=terminal.route or "edge",
                     device=terminal.device, response=out)
        return self._json(ctx, out)

    async def _edge_stream(self, ctx: Ctx, req: Any) -> Reply:
        run = await self._edge_start(ctx, self._edge_job(ctx, req, stream=True))
        gen = self._relay_edge(ctx, run)
        return self._sse_reply(ctx, gen)

    async def _relay_edge(self, ctx: Ctx, run: EdgeRun) -> AsyncIterator[bytes]:
        """Device chunks -> SSE. Retries before the first byte are invisible; after it, an error event."""
        b = shapes.ChunkBuilder(ctx.request_id, ctx.decision.model, ctx.kind)
        attempt: int | None = None
        sent = False
        parts: list[str] = []
        status, device, route = "client_closed", run.device, "edge"
        usage = (0, 0)
        finish: str | None = None
        try:
            async for ev in run.events():
                c = ev.chunk
                if c is not None:
                    if attempt is None:
                        attempt = c.attempt
                    elif c.attempt < attempt:
                        continue  # a late chunk of a superseded attempt
                    elif c.attempt > attempt:
                        if sent:
                            status = "error"
                            yield shapes.sse_error("the edge device was lost mid-stream; the partial answer is "
                                                   "incomplete, retry the request", "device_lost")
                            return
                        parts.clear()  # the earlier attempt died before its first byte reached the client
                        attempt = c.attempt
                    if c.error is not None:
                        # "released": the device gave the task back (shutting down); the AI gateway
                        # re-queues it at once, like any retryable failure.
                        retried = c.error.retryable or c.error.code == "released"
                        if not sent and retried:
                            continue  # the next attempt's chunks take over
                        if not sent:
                            raise EdgeFailed(f"the edge device failed: {c.error.code}", code=c.error.code)
                        status = "error"
                        if retried:
                            yield shapes.sse_error(f"the edge device was lost mid-stream ({c.error.code}); the "
                                                   "partial answer is incomplete, retry the request", "device_lost")
                        else:
                            yield shapes.sse_error(f"the edge device failed: {c.error.code}", c.error.code)
                        return
                    if not sent:
                        sent = True
                        if ctx.kind == "chat":
                            yield shapes.sse(b.role())
                    if c.delta:
                        parts.append(c.delta)
                        yield shapes.sse(b.delta(c.delta))
                    if c.final:
                        finish = c.finish_reason
                        if c.usage is not None:
                            usage = (c.usage.prompt_tokens, c.usage.completion_tokens)
                        status = "ok"
                        break
                    continue
                t = ev.terminal
                assert t is not None
                device, route = t.device or device, t.route or route
                if t.status != "COMPLETED":
                    if not sent:
                        raise EdgeFailed(f"the edge task failed: {t.error_code or 'unknown'}",
                                         code=t.error_code or "edge_failed")
                    status = "error"
                    yield shapes.sse_error("the edge task failed mid-stream", t.error_code or "edge_failed")
                    return
                so_far = "".join(parts)
                full = t.text or ""
                if sent and (t.attempt != attempt or not full.startswith(so_far)):
                    status = "error"
                    yield shapes.sse_error("the edge device was lost mid-stream; the partial answer is "
                                           "incomplete, retry the request", "device_lost")
                    return
                if not sent:
                    sent = True
                    if device:
                        ctx.headers["x-ig3-device"] = device
                    if ctx.kind == "chat":
                        yield shapes.sse(b.role())
                rest = full[len(so_far):]
                if rest:
                    parts.append(rest)
                    yield shapes.sse(b.delta(rest))
                finish = t.finish_reason
                usage = (t.prompt_tokens, t.completion_tokens)
                status = "ok"
                break
            else:
                if not sent:
                    raise GatewayTimeout("the edge task ended without an answer", code="edge_timeout")
                status = "error"
                yield shapes.sse_error("the edge stream ended early", "edge_failed")
                return
            yield shapes.sse(b.finish(finish))
            if ctx.include_usage:
                yield shapes.sse(b.usage(*usage))
            yield shapes.SSE_DONE
        finally:
            await run.close()
            response = None
            if status == "ok":
                build = shapes.chat_completion if ctx.kind == "chat" else shapes.text_completion
                response = build(ctx.request_id, ctx.decision.model, "".join(parts), finish, *usage)
            if sent or status == "ok":
                self._finish(ctx, prompt=usage[0], completion=usage[1] if status == "ok" else len(parts),
                             status=status, route=route, device=device, response=response)

    # ---------------------------------------------------------------------------------- models
    def list_models(self) -> dict[str, Any]:
        now = int(time.time())
        data = [{"id": a, "object": "model", "created": now, "owned_by": "ig3"} for a in sorted(self.config.aliases)]
        data += [{"id": g, "object": "model", "created": now, "owned_by": ds[0].provider}
                 for g, ds in sorted(self.config.groups.items())]
        for name, cap in sorted(self.catalogue.snapshot().items()):
            if cap.devices > 0 and name not in self.config.groups:
                data.append({"id": name, "object": "model", "created": now, "owned_by": "ig3-edge"})
        return {"object": "list", "data": data}
