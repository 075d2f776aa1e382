"""The cloud fallback (``CloudBackend`` port of ``ig3.tasks.service``): a SageMaker endpoint
invoked through LiteLLM's ``sagemaker_chat`` provider, plus the SLO probe that sends a task
straight to the cloud when no device is fast enough.

Design decisions:
- **LiteLLM only on this path.** ``import litellm`` costs ~2.4 s and a large heap, so it is
  imported on the first cloud call, never at module import; ``LITELLM_LOCAL_MODEL_COST_MAP`` is
  forced on first (its import otherwise fetches a price list over the network).
- **Explicit addressing, no guessing.** LiteLLM's ``sagemaker_chat`` builds the runtime URL from
  the region unless ``sagemaker_base_url`` is given, and then uses that URL *as is* for both the
  plain and the streaming call. So we always pass the full operation URL ourselves —
  ``{runtime}/endpoints/{name}/invocations`` or ``.../invocations-response-stream`` — with
  ``{runtime}`` from ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` (boto3's own variable for the service:
  the local cloud's endpoint, or a VPC endpoint) or the regional default, and ``aws_region_name``
  for the SigV4 scope. LiteLLM puts ``hf_model_name`` in the body's ``model``: the served model.
- **What the endpoint serves is configuration** (``IG3_SAGEMAKER_MODELS``, comma-separated
  routable names): the fallback only takes tasks for those models, and only chat tasks
  (``sagemaker_chat`` is the messages API). No list, no fallback — an endpoint must never be sent a
  model it does not have.
- **Streams keep streaming.** A task that asked for a stream gets the endpoint's event stream
  relayed as ``StreamChunk``s on ``ig3/v1/tasks/{id}/stream`` (the same topic a device uses), in
  batches of at least ``STREAM_BATCH_S`` so a fast model cannot flood IoT Core's publish quota.
- **Bounded by SageMaker's own limit**: one invocation may run 60 s; the task's deadline caps it
  further. A failure raises; the service turns it into a failed cloud attempt (re-queued or FAILED).
- **Where it runs.** The dispatcher decides the route and writes the cloud assignment (its
  timeout message and TaskAssigned first), then hands it off on the ``cloud`` queue to the
  ``cloud`` function: a container image (LiteLLM is ~225 MB, past the 250 MB zip limit),
  batch size 1, timeout above SageMaker's 60 s — one slow endpoint call never holds up a batch
  of edge dispatches, and the dispatch zip never needs LiteLLM (``backend_from_env(...,
  runs_here=False)``: the dispatcher only needs to know what the endpoint serves). The worker
  claims each assignment once (``RedisCloudClaims``), so a re-sent hand-off never calls the
  endpoint twice; a worker that dies mid-call is recovered by the assignment's timeout.
  ``ig3 up`` runs the same split (its pollers come from the topology). Without a ``cloud`` queue
  (a function that does not declare it, e.g. the llm image's inline dispatch) the attempt runs
  inline, which needs LiteLLM in that package.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from ig3.observability import logger
from ig3.tasks.model import Task
from ig3.topology import SAGEMAKER_ENDPOINT_ENV, SAGEMAKER_MODELS_ENV
from ig3.wire import StreamChunk, TaskOutput, Usage, task_stream_topic

SAGEMAKER_RUNTIME_URL_ENV = "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"
SAGEMAKER_MAX_INVOCATION_S = 60.0
STREAM_BATCH_S = 0.05


class CloudUnsupported(Exception):
    """The task is of a kind the endpoint cannot run (only chat goes through sagemaker_chat)."""


_litellm_module: Any = None


def _litellm() -> Any:
    global _litellm_module
    if _litellm_module is None:
        os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        t0 = time.perf_counter()
        import litellm

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        _litellm_module = litellm
        logger.info("litellm imported", extra={"import_ms": round((time.perf_counter() - t0) * 1000)})
    return _litellm_module


def runtime_base_url(region: str, override: str | None = None) -> str:
    if override:
        return override.rstrip("/")
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://runtime.sagemaker.{region}.{suffix}"


class SageMakerChatBackend:
    """Runs one chat task on a SageMaker endpoint (messages API) through LiteLLM."""

    kinds = frozenset({"chat"})

    def __init__(
        self,
        endpoint: str,
        models: frozenset[str] | set[str] | list[str],
        *,
        region: str,
        runtime_url: str | None = None,
        stream_publisher: Any | None = None,
        max_invocation_s: float = SAGEMAKER_MAX_INVOCATION_S,
        clock: Callable[[], float] = time.time,
    ):
        if not endpoint:
            raise ValueError("a SageMaker endpoint name is required")
        if not region:
            raise ValueError("the SageMaker endpoint's region is required")
        self.endpoint = endpoint
        self.name = f"sagemaker/{endpoint}"
        self.models = frozenset(models)
        self.region = region
        self.base_url = runtime_base_url(region, runtime_url)
        self.stream_publisher = stream_publisher  # IotPublisher for the task's stream topic
        self.max_invocation_s = max_invocation_s
        self.clock = clock

    def serves(self, model: str) -> bool:
        return model in self.models

    def operation_url(self, stream: bool) -> str:
        op = "invocations-response-stream" if stream else "invocations"
        return f"{self.base_url}/endpoints/{self.endpoint}/{op}"

    def run(self, task: Task) -> tuple[TaskOutput, Usage]:
        if task.kind not in self.kinds or not task.input.messages:
            raise CloudUnsupported(f"the cloud fallback runs chat tasks only, not {task.kind}")
        if not self.serves(task.model):
            raise CloudUnsupported(f"the endpoint does not serve {task.model!r}")
        stream = bool(task.stream and self.stream_publisher is not None)
        litellm = _litellm()  # first: a cold import (seconds) must count against the deadline
        remaining = (task.deadline - self.clock()) if task.deadline else self.max_invocation_s
        if remaining <= 0:
            raise TimeoutError("the attempt's deadline passed before the endpoint was called")
        limits = task.limits
        kwargs: dict[str, Any] = {
            "model": f"sagemaker_chat/{self.endpoint}",
            "messages": [m.model_dump() for m in task.input.messages],
            "max_tokens": limits.max_tokens,
            "temperature": limits.temperature,
            "top_p": limits.top_p,
            "aws_region_name": self.region,
            "sagemaker_base_url": self.operation_url(stream),
            "hf_model_name": task.model,
            "timeout": max(0.5, min(self.max_invocation_s, remaining)),
            "num_retries": 0,  # the task service owns retries (another device, another attempt)
        }
        if limits.stop:
            kwargs["stop"] = list(limits.stop)
        if limits.seed is not None:
            kwargs["seed"] = limits.seed
        t0 = time.perf_counter()
        if not stream:
            resp = litellm.completion(**kwargs)
            choice = resp.choices[0]
            usage = getattr(resp, "usage", None)
            duration_ms = (time.perf_counter() - t0) * 1000.0
            return (
                TaskOutput(text=choice.message.content or "", finish_reason=choice.finish_reason),
                _usage(usage, duration_ms, None),
            )
        return self._run_stream(task, litellm, kwargs, t0)

    def _run_stream(
        self, task: Task, litellm: Any, kwargs: dict[str, Any], t0: float
    ) -> tuple[TaskOutput, Usage]:
        topic = task_stream_topic(task.task_id)
        parts: list[str] = []
        pending: list[str] = []
        seq = 0
        last_sent = time.perf_counter()
        ttft_ms: float | None = None
        finish: str | None = None
        usage: Any = None

        def send(chunk: StreamChunk) -> None:
            nonlocal seq
            self.stream_publisher.publish(topic, chunk.model_dump_json(exclude_none=True).encode())
            seq += 1

        for chunk in litellm.completion(stream=True, stream_options={"include_usage": True}, **kwargs):
            if getattr(chunk, "usage", None) is not None:
                usage = chunk.usage
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            text = getattr(choice.delta, "content", None) or ""
            if choice.finish_reason:
                finish = choice.finish_reason
            if text:
                if ttft_ms is None:
                    ttft_ms = (time.perf_counter() - t0) * 1000.0
                parts.append(text)
                pending.append(text)
                if time.perf_counter() - last_sent >= STREAM_BATCH_S:
                    send(
                        StreamChunk(
                            task_id=task.task_id, attempt=task.attempt, seq=seq, delta="".join(pending)
                        )
                    )
                    pending.clear()
                    last_sent = time.perf_counter()
        out_usage = _usage(usage, (time.perf_counter() - t0) * 1000.0, ttft_ms)
        send(
            StreamChunk(
                task_id=task.task_id,
                attempt=task.attempt,
                seq=seq,
                delta="".join(pending),
                final=True,
                finish_reason=finish or "stop",
                usage=out_usage,
            )
        )
        return TaskOutput(text="".join(parts), finish_reason=finish or "stop"), out_usage


def _usage(usage: Any, duration_ms: float, ttft_ms: float | None) -> Usage:
    prompt = int(getattr(usage, "prompt_tokens", 0) or 0) if usage is not None else 0
    completion = int(getattr(usage, "completion_tokens", 0) or 0) if usage is not None else 0
    decode_ms = duration_ms - (ttft_ms or 0.0)
    tps = (
        (completion - 1) / (decode_ms / 1000.0)
        if completion > 1 and ttft_ms is not None and decode_ms > 0
        else None
    )
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        ttft_ms=ttft_ms,
        duration_ms=round(duration_ms, 3),
        tokens_per_s=tps,
    )


def backend_from_env(
    env: dict[str, str] | None = None, stream_publisher: Any | None = None, *, runs_here: bool = True
) -> SageMakerChatBackend | None:
    """The configured fallback, or None when no endpoint (or no served model) is configured, or
    when it would run in this process (``runs_here``) but this package does not ship LiteLLM
    (checked without importing it): a task must never be assigned to a fallback that cannot run.
    ``runs_here=False``: the dispatcher that hands cloud work to the worker (which has LiteLLM)."""
    import importlib.util

    env = os.environ if env is None else env
    endpoint = (env.get(SAGEMAKER_ENDPOINT_ENV) or "").strip()
    models = frozenset(m.strip() for m in (env.get(SAGEMAKER_MODELS_ENV) or "").split(",") if m.strip())
    if not endpoint:
        return None
    if not models:
        logger.warning(
            "SageMaker endpoint configured without served models: cloud fallback off",
            extra={"endpoint": endpoint, "missing": SAGEMAKER_MODELS_ENV},
        )
        return None
    if runs_here and importlib.util.find_spec("litellm") is None:
        logger.warning(
            "SageMaker endpoint configured but litellm is not installed: cloud fallback off",
            extra={"endpoint": endpoint},
        )
        return None
    region = env.get("AWS_REGION_NAME") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or ""
    return SageMakerChatBackend(
        endpoint,
        models,
        region=region,
        runtime_url=env.get(SAGEMAKER_RUNTIME_URL_ENV),
        stream_publisher=stream_publisher,
    )


class RedisCloudClaims:
    """``CloudClaims``: one ``SET NX`` per cloud assignment (task, attempt), kept until after its
    deadline. A worker that dies after claiming leaves the assignment to its timeout."""

    def __init__(self, redis: Any, prefix: str = "ig3:"):
        self._redis = redis
        self._prefix = prefix

    def claim(self, task_id: str, attempt: int, ttl_s: float) -> bool:
        key = f"{self._prefix}cloud-run:{task_id}:{attempt}"
        return bool(self._redis.set(key, b"1", nx=True, ex=max(1, int(ttl_s))))


class FleetSpeed:
    """How fast the fastest free device serves a model (tokens/s), for the SLO policy.

    Reads the scheduler's bounded candidate fetch (the best of the free-capacity index by static
    quality, which is capability x reliability): O(k log N), never a fleet scan. ``None`` when no
    free device reports a speed for the model."""

    def __init__(self, live: Any, clock: Callable[[], float] = time.time, top: int = 16):
        self._live = live
        self._clock = clock
        self._top = top

    def best_tokens_per_s(self, model: str, region: str | None = None) -> float | None:
        fetched = self._live.fetch(
            model, region, None, top=self._top, sample=0, nearest=0, offset=0, now=self._clock()
        )
        best: float | None = None
        for c in fetched.candidates:
            if not c.online or c.draining or c.free <= 0:
                continue
            offer = c.models.get(model)
            tps = offer.tokens_per_s if offer is not None and offer.tokens_per_s else c.tokens_per_s
            if tps is not None and (best is None or tps > best):
                best = tps
        return best
