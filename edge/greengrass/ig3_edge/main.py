"""Entry point: configuration -> transport, backend, signer -> Agent; signals -> graceful shutdown.

Kept thin on purpose: everything here is wiring. ``run`` takes an already-built transport
(and backend) so tests, the Greengrass v1 adapter and other embedders inject their own.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading

from ig3_edge.agent import Agent
from ig3_edge.backends.base import Backend
from ig3_edge.config import AgentConfig, parse_config
from ig3_edge.signing import ResultSigner
from ig3_edge.transports import build_transport
from ig3_edge.transports.base import Transport

log = logging.getLogger("ig3_edge")


def build_backend(cfg: AgentConfig) -> Backend:
    if cfg.backend == "openai":
        from ig3_edge.backends.openai_server import OpenAIServerBackend

        if not cfg.openai_base_url:
            raise SystemExit("--openai-base-url is required with --backend openai")
        return OpenAIServerBackend(cfg.openai_base_url, models=list(cfg.openai_models))
    from ig3_edge.backends.llama_cpp import LlamaCppBackend
    from ig3_edge.models import ModelRegistry

    return LlamaCppBackend(ModelRegistry(cfg.models_dir), slots=cfg.capacity, n_threads=cfg.gen_threads,
                           n_ctx=cfg.n_ctx)


def build_agent(cfg: AgentConfig, transport: Transport | None = None, backend: Backend | None = None) -> Agent:
    if transport is None:
        transport = build_transport(cfg.transport, thing=cfg.thing, mqtt_url=cfg.mqtt_url,
                                    mqtt_protocol=cfg.mqtt_protocol)
    signer = ResultSigner.from_file(cfg.key_file) if cfg.key_file else None
    if signer is None:
        log.warning("no --key-file: results are NOT signed (the cloud will not attribute them)")
    return Agent(cfg, transport, backend or build_backend(cfg), signer)


def run(cfg: AgentConfig, transport: Transport | None = None, backend: Backend | None = None) -> int:
    agent = build_agent(cfg, transport, backend)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.start()
    while not stop.wait(1.0):
        pass
    agent.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return run(parse_config(argv))
