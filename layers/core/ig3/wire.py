"""Device protocol (MQTT, JSON, versioned under ``ig3/v1/``).

The one module both sides speak: the cloud functions and the Greengrass edge agent ship it.
It imports nothing but pydantic and the standard library (the agent has no boto3, no litellm).

| topic                              | direction            | model         |
|------------------------------------|----------------------|---------------|
| ig3/v1/devices/{thing}/tasks       | cloud -> device      | DeviceTask    |
| ig3/v1/devices/{thing}/results     | device -> cloud      | DeviceResult  |
| ig3/v1/devices/{thing}/heartbeat   | device -> cloud      | Heartbeat     |
| ig3/v1/tasks/{task}/stream         | device -> subscribers| StreamChunk   |
| ig3/v1/devices/{thing}/cancel      | cloud -> device      | TaskCancel    |
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PROTOCOL_VERSION = 1
TOPIC_ROOT = "ig3/v1"
# Thing names are also MQTT topic levels: no wildcards, no separators.
THING_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
TASK_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_MESSAGE_BYTES = 128 * 1024  # IoT Core's message size limit

TaskKind = Literal["chat", "completion", "embedding"]


def device_tasks_topic(thing: str) -> str:
    return f"{TOPIC_ROOT}/devices/{_thing(thing)}/tasks"


def device_results_topic(thing: str) -> str:
    return f"{TOPIC_ROOT}/devices/{_thing(thing)}/results"


def device_heartbeat_topic(thing: str) -> str:
    return f"{TOPIC_ROOT}/devices/{_thing(thing)}/heartbeat"


def device_cancel_topic(thing: str) -> str:
    return f"{TOPIC_ROOT}/devices/{_thing(thing)}/cancel"


def task_stream_topic(task_id: str) -> str:
    if not TASK_ID_RE.match(task_id):
        raise ValueError(f"invalid task id for a topic: {task_id!r}")
    return f"{TOPIC_ROOT}/tasks/{task_id}/stream"


def thing_from_topic(topic: str) -> str:
    """``ig3/v1/devices/{thing}/...`` -> thing (what the IoT rule's ``topic(4)`` returns)."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != "ig3" or parts[1] != "v1" or parts[2] != "devices":
        raise ValueError(f"not a device topic: {topic!r}")
    return _thing(parts[3])


def _thing(thing: str) -> str:
    if not THING_NAME_RE.match(thing):
        raise ValueError(f"invalid thing name: {thing!r}")
    return thing


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ChatMessage(_Wire):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class TaskLimits(_Wire):
    max_tokens: int = Field(default=256, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list, max_length=4)


class TaskInput(_Wire):
    """Exactly one of ``messages`` (chat), ``prompt`` (completion), ``texts`` (embedding)."""

    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    texts: list[str] | None = None


class DeviceTask(_Wire):
    v: int = PROTOCOL_VERSION
    id: str
    attempt: int = Field(ge=1)
    kind: TaskKind
    model: str
    model_hash: str | None = None  # sha256 of the model file the task was routed for
    input: TaskInput
    limits: TaskLimits = Field(default_factory=TaskLimits)
    deadline: float  # epoch seconds; the device stops work past it
    stream: bool = True

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not TASK_ID_RE.match(v):
            raise ValueError("invalid task id")
        return v


class TaskCancel(_Wire):
    """Cloud -> device: stop work on one assignment (the user went away, or it was re-routed).

    The device stops at the next token and answers with an ``error`` result, code ``cancelled``.
    ``attempt`` None cancels whatever attempt of the task the device holds.
    """

    v: int = PROTOCOL_VERSION
    task_id: str
    attempt: int | None = None
    reason: str | None = None


class Usage(_Wire):
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    ttft_ms: float | None = None
    duration_ms: float | None = None
    tokens_per_s: float | None = None


class ResultError(_Wire):
    code: str  # e.g. bad_task, model_not_found, overloaded, deadline_exceeded, internal
    message: str
    retryable: bool = False


class TaskOutput(_Wire):
    text: str | None = None
    finish_reason: str | None = None
    embeddings: list[list[float]] | None = None


class DeviceResult(_Wire):
    """A device's answer to one assignment (task id + attempt).

    ``status``: ``ok`` (output + usage), ``error`` (error), or ``released`` — the device gave
    the task back (shutdown) so the cloud re-queues it at once instead of waiting for a timeout.
    """

    v: int = PROTOCOL_VERSION
    task_id: str
    attempt: int = Field(ge=1)
    thing: str
    status: Literal["ok", "error", "released"]
    output: TaskOutput | None = None
    error: ResultError | None = None
    usage: Usage | None = None
    model_hash: str | None = None
    signer: str | None = None  # the device key's address (what its DID names)
    signature: str | None = None  # over signing_payload()

    def signing_payload(self) -> bytes:
        return result_signing_payload(self)


def output_digest(output: TaskOutput | None) -> str:
    """sha256 over the canonical JSON of the output (empty string for none)."""
    if output is None:
        return hashlib.sha256(b"").hexdigest()
    return hashlib.sha256(canonical_json(output.model_dump(exclude_none=True))).hexdigest()


def result_signing_payload(result: DeviceResult) -> bytes:
    """Canonical bytes a device signs: (task id, attempt, status, output hash, usage counts, model hash)."""
    usage = result.usage or Usage()
    return canonical_json(
        {
            "v": PROTOCOL_VERSION,
            "task_id": result.task_id,
            "attempt": result.attempt,
            "thing": result.thing,
            "status": result.status,
            "output_sha256": output_digest(result.output),
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "model_hash": result.model_hash or "",
        }
    )


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class StreamChunk(_Wire):
    """One ordered piece of a streamed answer; ``seq`` starts at 0 per attempt."""

    task_id: str
    attempt: int
    seq: int = Field(ge=0)
    delta: str = ""
    final: bool = False
    finish_reason: str | None = None
    usage: Usage | None = None
    error: ResultError | None = None


class ModelInfo(_Wire):
    name: str  # routable name, e.g. "smollm2-135m-instruct"
    file: str | None = None
    sha256: str | None = None
    arch: str | None = None
    params: int | None = None
    ctx: int | None = None
    quant: str | None = None
    kinds: list[TaskKind] = Field(default_factory=lambda: ["chat", "completion"])
    tokens_per_s: float | None = None


class DeviceLoad(_Wire):
    in_flight: int = Field(default=0, ge=0)
    queued: int = Field(default=0, ge=0)
    capacity: int = Field(default=1, ge=0)


class Location(_Wire):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class Heartbeat(_Wire):
    v: int = PROTOCOL_VERSION
    thing: str
    ts: float
    version: str = "0"
    region: str | None = None
    location: Location | None = None
    load: DeviceLoad = Field(default_factory=DeviceLoad)
    tokens_per_s: float | None = None  # EWMA across recent tasks
    cpu_percent: float | None = None
    mem_percent: float | None = None
    models: list[ModelInfo] = Field(default_factory=list)
    status: Literal["online", "draining"] = "online"
