"""The agent as the fleet launcher runs it: ``python -m ig3_edge`` in a subprocess, configured by
options and ``IG3_AGENT_*`` variables, on the real Mosquitto; SIGTERM -> released results, exit 0."""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

import pytest

from ig3 import wire
from ig3.wire import DeviceResult
from ig3_edge.signing import recover_signer
from tests.edge.conftest import TINY, Observer, task_msg, uid

pytestmark = pytest.mark.integration


def test_cli_ready_line_then_sigterm_releases_work(mqtt_url, tiny_models, tmp_path):
    from eth_account import Account

    key = "0x" + secrets.token_hex(32)
    (tmp_path / "device.key").write_text(key + "\n")
    thing = uid("cli")
    env = {**os.environ, "IG3_AGENT_CAPACITY": "1", "IG3_AGENT_MAX_QUEUE": "2", "IG3_AGENT_DRAIN_S": "0.3",
           "IG3_AGENT_THREADS": "1", "IG3_AGENT_N_CTX": "4096"}
    obs = Observer(mqtt_url, [wire.device_results_topic(thing), wire.device_heartbeat_topic(thing)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "ig3_edge", "--transport", "mqtt", "--mqtt-url", mqtt_url, "--thing", thing,
         "--models-dir", str(tiny_models), "--region", "eu-west-1", "--lat", "52.5", "--lon", "13.4",
         "--heartbeat-s", "5", "--key-file", str(tmp_path / "device.key"), "--version", "9.9.9"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("agent ready "), (line, proc.stderr.read() if proc.poll() is not None else "")
        hb = obs.wait(lambda: obs.bodies(wire.device_heartbeat_topic(thing)))[0]
        assert hb["version"] == "9.9.9" and hb["region"] == "eu-west-1"
        assert hb["location"] == {"lat": 52.5, "lon": 13.4} and hb["load"]["capacity"] == 1
        assert TINY in {m["name"] for m in hb["models"]}
        ids = [uid(f"x{i}") for i in range(3)]
        for tid in ids:
            obs.publish(wire.device_tasks_topic(thing), task_msg(tid, max_tokens=4000, stream=False))
        obs.wait(lambda: any(h["load"]["in_flight"] == 1 and h["load"]["queued"] == 2
                             for h in obs.bodies(wire.device_heartbeat_topic(thing))))
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
        res = obs.wait_results(thing, ids, timeout=5)
        heartbeats = obs.bodies(wire.device_heartbeat_topic(thing))
    finally:
        if proc.poll() is None:
            proc.kill()
        obs.close()
    assert rc == 0
    assert all(res[t]["status"] == "released" and res[t]["error"]["retryable"] for t in ids), res
    address = Account.from_key(key).address
    assert all(recover_signer(DeviceResult.model_validate(res[t])) == address for t in ids)
    assert heartbeats[-1]["status"] == "draining"
    assert len(proc.stdout.read().splitlines()) == 0  # exactly one line on stdout
