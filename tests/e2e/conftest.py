"""``ig3 up`` as a user runs it: a subprocess, waited on for its ``ready`` line, stopped by SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

READY_TIMEOUT_S = 240


@dataclass
class RunningCloud:
    url: str
    api_key: str
    process: subprocess.Popen
    state_dir: Path
    log: Path


def start_cloud(tmp: Path, *, devices: int, extra_env: dict[str, str] | None = None,
                args: tuple[str, ...] = ("--tiny-models",)) -> RunningCloud:
    port = free_port()
    log = tmp / "ig3-up.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    for k in [k for k in env if k.startswith(("AWS_", "IG3_TABLE", "IG3_QUEUE"))]:
        env.pop(k)  # the local cloud makes its own
    if "REDIS_URL" not in (extra_env or {}):
        env.pop("REDIS_URL", None)
    if "MQTT_URL" not in (extra_env or {}):
        env.pop("MQTT_URL", None)
    state = tmp / "state"
    cmd = [sys.executable, "-m", "ig3.cli", "up", "--port", str(port), "--devices", str(devices),
           "--state-dir", str(state), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log, "wb"), env=env,  # noqa: SIM115
                            start_new_session=True)
    deadline = time.time() + READY_TIMEOUT_S
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline().decode()
        if line.startswith("ready "):
            break
        if not line and proc.poll() is not None:
            raise AssertionError(f"ig3 up exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"ig3 up was not ready in {READY_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")
    parts = dict(p.split("=", 1) for p in line.split()[2:])
    return RunningCloud(url=line.split()[1], api_key=parts["api_key"], process=proc, state_dir=state, log=log)


def stop_cloud(cloud: RunningCloud) -> int:
    cloud.process.send_signal(signal.SIGTERM)
    try:
        return cloud.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(cloud.process.pid, signal.SIGKILL)
        raise AssertionError("ig3 up did not stop within 60 s of SIGTERM") from None


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    c = start_cloud(tmp_path_factory.mktemp("cloud"), devices=2)
    yield c
    stop_cloud(c)
