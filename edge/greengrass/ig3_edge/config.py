"""Agent settings: command-line options, each also readable from an ``IG3_AGENT_*`` variable.

Precedence: command line > environment > default. The Greengrass recipe passes its
ComponentConfiguration as environment variables (``Setenv``), the local cloud's fleet
launcher passes options; both end up here, in one frozen dataclass.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from ig3_edge import __version__

ENV_PREFIX = "IG3_AGENT_"


@dataclass(frozen=True)
class AgentConfig:
    thing: str
    models_dir: Path
    transport: str = "mqtt"  # mqtt | ipc | greengrass-v1
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_protocol: int = 4  # 4 = MQTT 3.1.1, 5 = MQTT 5
    region: str | None = None
    lat: float | None = None
    lon: float | None = None
    capacity: int = 1
    max_queue: int = 4
    heartbeat_s: float = 30.0
    heartbeat_min_gap_s: float = 0.25  # on-change heartbeats are coalesced to at most one per gap
    key_file: Path | None = None
    version: str = __version__
    threads: int = 0  # llama.cpp threads per generation; 0 = cpu_count // capacity
    n_ctx: int = 2048
    scan_interval_s: float = 5.0
    stream_coalesce_ms: float = 0.0  # >0 merges tokens into one chunk per window (IoT Core: 100 msg/s)
    stream_qos: int = 0
    drain_s: float = 10.0  # on shutdown, in-flight tasks get this long to finish before release
    warmup: bool = True
    backend: str = "llama-cpp"  # llama-cpp | openai
    openai_base_url: str | None = None  # for the openai backend (llama-server, Ollama)
    openai_models: tuple[str, ...] = field(default_factory=tuple)

    @property
    def gen_threads(self) -> int:
        if self.threads > 0:
            return self.threads
        return max(1, (os.cpu_count() or 1) // max(1, self.capacity))


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


def _bool(value: str | bool | None) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ig3_edge", description="iG3 edge agent (Greengrass v2 component)")
    e = _env
    p.add_argument("--transport", choices=["mqtt", "ipc", "greengrass-v1"], default=e("transport", "mqtt"))
    p.add_argument("--mqtt-url", default=e("mqtt_url", "mqtt://127.0.0.1:1883"))
    p.add_argument("--mqtt-protocol", type=int, choices=[4, 5], default=int(e("mqtt_protocol", "4")))
    p.add_argument("--thing", default=e("thing") or os.environ.get("AWS_IOT_THING_NAME"))
    p.add_argument("--models-dir", default=e("models_dir"))
    p.add_argument("--region", default=e("region"))
    p.add_argument("--lat", type=float, default=_float(e("lat")))
    p.add_argument("--lon", type=float, default=_float(e("lon")))
    p.add_argument("--capacity", type=int, default=int(e("capacity", "1")))
    p.add_argument("--max-queue", type=int, default=int(e("max_queue", "4")))
    p.add_argument("--heartbeat-s", type=float, default=float(e("heartbeat_s", "30")))
    p.add_argument("--key-file", default=e("key_file"))
    p.add_argument("--version", default=e("version", __version__))
    p.add_argument("--threads", type=int, default=int(e("threads", "0")))
    p.add_argument("--n-ctx", type=int, default=int(e("n_ctx", "2048")))
    p.add_argument("--scan-interval-s", type=float, default=float(e("scan_interval_s", "5")))
    p.add_argument("--stream-coalesce-ms", type=float, default=float(e("stream_coalesce_ms", "0")))
    p.add_argument("--stream-qos", type=int, choices=[0, 1], default=int(e("stream_qos", "0")))
    p.add_argument("--drain-s", type=float, default=float(e("drain_s", "10")))
    p.add_argument("--no-warmup", action="store_true", default=not _bool(e("warmup", "true")))
    p.add_argument("--backend", choices=["llama-cpp", "openai"], default=e("backend", "llama-cpp"))
    p.add_argument("--openai-base-url", default=e("openai_base_url"))
    p.add_argument("--openai-models", default=e("openai_models", ""),
                   help="comma-separated model names served by the OpenAI-compatible server")
    return p


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def parse_config(argv: list[str] | None = None) -> AgentConfig:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not a.thing:
        parser.error("--thing (or IG3_AGENT_THING / AWS_IOT_THING_NAME) is required")
    if not a.models_dir and a.backend == "llama-cpp":
        parser.error("--models-dir (or IG3_AGENT_MODELS_DIR) is required")
    if a.capacity < 1 or a.max_queue < 0:
        parser.error("--capacity must be >= 1 and --max-queue >= 0")
    return AgentConfig(
        thing=a.thing,
        models_dir=Path(a.models_dir or ".").expanduser(),
        transport=a.transport,
        mqtt_url=a.mqtt_url,
        mqtt_protocol=a.mqtt_protocol,
        region=a.region or None,  # the recipe passes "" when no region is configured
        lat=a.lat,
        lon=a.lon,
        capacity=a.capacity,
        max_queue=a.max_queue,
        heartbeat_s=a.heartbeat_s,
        key_file=Path(a.key_file).expanduser() if a.key_file else None,
        version=a.version,
        threads=a.threads,
        n_ctx=a.n_ctx,
        scan_interval_s=a.scan_interval_s,
        stream_coalesce_ms=a.stream_coalesce_ms,
        stream_qos=a.stream_qos,
        drain_s=a.drain_s,
        warmup=not a.no_warmup,
        backend=a.backend,
        openai_base_url=a.openai_base_url,
        openai_models=tuple(m.strip() for m in a.openai_models.split(",") if m.strip()),
    )
