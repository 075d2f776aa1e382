"""``ig3 up`` starts, refuses a taken port clearly, and stops cleanly on SIGTERM with no orphans."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.e2e.conftest import start_cloud, stop_cloud

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


def test_sigterm_stops_everything_with_mosquitto_and_real_redis(tmp_path, mqtt_url, redis_url):
    # Any broker and any Redis can stand in for the embedded ones (MQTT_URL / REDIS_URL).
    cloud = start_cloud(tmp_path, devices=1, extra_env={"MQTT_URL": mqtt_url, "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/13"})
    assert _pids_mentioning(str(cloud.state_dir)), "the edge agents should be running"
    assert stop_cloud(cloud) == 0
    assert _pids_mentioning(str(cloud.state_dir)) == [], "orphan processes after SIGTERM"


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "ig3.cli", "up", "--port", str(port), "--devices", "0"],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "already in use" in out.stderr


def test_unreachable_redis_is_a_clear_error(tmp_path):
    from tests.conftest import free_port

    dead = free_port()  # nothing listens there
    out = subprocess.run([sys.executable, "-m", "ig3.cli", "up", "--port", str(free_port()), "--devices", "0",
                          "--redis-url", f"redis://127.0.0.1:{dead}/0", "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "Redis is not reachable" in out.stderr


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    parents[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [root]
    while frontier:
        nxt = [p for p, pp in parents.items() if pp in frontier]
        found += nxt
        frontier = nxt
    return found


def test_sigkill_leaves_no_orphans(tmp_path):
    """Killed outright, `ig3 up` cannot stop its parts in order: they must notice and go themselves."""
    import signal
    import time

    cloud = start_cloud(tmp_path, devices=1)
    children = _descendants(cloud.process.pid)
    assert len(children) >= 3  # containers, the agent, redis
    cloud.process.send_signal(signal.SIGKILL)
    cloud.process.wait(timeout=10)
    deadline = time.time() + 30
    while time.time() < deadline:
        alive = [p for p in children if os.path.exists(f"/proc/{p}")
                 and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
        if not alive:
            break
        time.sleep(0.5)
    assert not alive, f"orphans after SIGKILL: {alive}"
