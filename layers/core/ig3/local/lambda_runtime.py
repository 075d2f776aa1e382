"""Runs function handlers the way Lambda does: one invocation at a time per container.

Each container is a worker process (spawned, so no inherited threads or sockets) that imports
its handlers once and keeps them warm, like a Lambda execution environment. Module-level state
(Powertools resolvers, cached clients) is therefore never shared by two concurrent invocations —
the same guarantee handlers get in AWS.
"""
from __future__ import annotations

import importlib
import multiprocessing
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

_handlers: dict[str, Any] = {}


@dataclass
class LambdaContext:
    function_name: str
    aws_request_id: str
    memory_limit_in_mb: int = 512
    timeout_s: int = 30
    invoked_function_arn: str = ""
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""
    _deadline: float = 0.0

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


def _init_worker(env: dict[str, str]) -> None:
    from ig3.local.procs import exit_when_orphaned

    os.environ.update(env)
    exit_when_orphaned()  # a container never outlives `ig3 up`, however it ends


def _invoke(name: str, handler: str, event: dict[str, Any], timeout_s: int, memory_mb: int) -> Any:
    fn = _handlers.get(handler)
    if fn is None:
        module, _, attr = handler.partition(":")
        fn = _handlers[handler] = getattr(importlib.import_module(module), attr)
    region = os.environ.get("AWS_REGION", "us-east-1")
    ctx = LambdaContext(function_name=name, aws_request_id=str(uuid.uuid4()), memory_limit_in_mb=memory_mb,
                        timeout_s=timeout_s,
                        invoked_function_arn=f"arn:aws:lambda:{region}:000000000000:function:{name}",
                        _deadline=time.time() + timeout_s)
    return fn(event, ctx)


class LambdaRuntime:
    """A pool of containers; ``invoke`` blocks the calling thread until the handler returns."""

    def __init__(self, env: dict[str, str], max_containers: int = 4):
        mp = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(max_workers=max_containers, mp_context=mp, initializer=_init_worker,
                                         initargs=(env,))

    def submit(self, name: str, handler: str, event: dict[str, Any], *, timeout_s: int = 30, memory_mb: int = 512):
        return self._pool.submit(_invoke, name, handler, event, timeout_s, memory_mb)

    def invoke(self, name: str, handler: str, event: dict[str, Any], *, timeout_s: int = 30,
               memory_mb: int = 512) -> Any:
        return self.submit(name, handler, event, timeout_s=timeout_s, memory_mb=memory_mb).result()

    def warm(self, handlers: list[tuple[str, str]]) -> None:
        """Import the handlers in every container up front (Lambda's init phase)."""
        futures = [self._pool.submit(_warm, [h for _, h in handlers]) for _ in range(self._pool._max_workers)]
        for f in futures:
            f.result()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _warm(handlers: list[str]) -> None:
    for handler in handlers:
        if handler not in _handlers:
            module, _, attr = handler.partition(":")
            _handlers[handler] = getattr(importlib.import_module(module), attr)
    time.sleep(0.2)  # let the other warm-up calls reach other workers
