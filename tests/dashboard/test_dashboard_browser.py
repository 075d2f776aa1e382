"""The dashboard in a real browser against ``ig3 up`` (3 tiny-model agents), plus its SSE endpoints over HTTP.

Browser: the system's Chromium (Debian ``chromium``) driven by ``playwright-core`` (``drive.mjs``);
this side runs the network, answers the driver's requests (submit a task through the API, SIGKILL a
device's agent found by its command line, sign a SIWE message with a fresh wallet) and checks what
the HTTP side promises. Screenshots land in ``tests/artifacts/dashboard/``.

Set-up the way a user would: ``apt-get install -y chromium`` when it is missing, ``npm ci`` for the
locked ``playwright-core``; skipped (with the reason) only where apt or npm cannot be used.
The heartbeat TTL is the network's own (30 s) and the offline sweep runs every 5 s locally, so a
killed device turns offline on screen after 30-40 s; the whole test stays around 2 minutes.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import start_cloud, stop_cloud

HERE = Path(__file__).parent
ARTIFACTS = HERE.parent / "artifacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
CHAT = {"kind": "chat", "model": "tiny-llama", "input": {"messages": [{"role": "user", "content": "Say hello"}]}}

pytestmark = pytest.mark.timeout(420)


def _ensure_chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.skip("Chromium is missing and apt-get cannot install it here (needs apt-get as root)")
    proc = subprocess.run([apt, "install", "-y", "chromium"], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if proc.returncode != 0 or not Path(CHROMIUM).exists():
        pytest.skip(f"apt-get install chromium failed: {proc.stderr[-500:]}")
    return CHROMIUM


def _ensure_playwright() -> None:
    if (HERE / "node_modules" / "playwright-core").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node/npm are not installed (needed for playwright-core)")
    proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"npm ci failed (offline registry?): {proc.stderr[-500:]}")


def call(url: str, method: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"content-type": "application/json",
                                          **({"authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def sse_events(url: str, path: str, token: str, *, until: str, timeout_s: float = 60) -> list[tuple[str, dict]]:
    """Read an SSE stream until an event named ``until`` whose record is terminal (or the stream ends)."""
    req = urllib.request.Request(url + path, headers={"authorization": f"Bearer {token}"})
    events: list[tuple[str, dict]] = []
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        name, data = None, []
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and name:
                events.append((name, json.loads("".join(data))))
                if name == until:
                    return events
                name, data = None, []
    return events


def agent_pid(state_dir: Path, thing: str) -> int:
    """The edge agent of ``thing`` under this network's state dir, found by its command line."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [a.decode(errors="replace") for a in args]
        if "ig3_edge" in text and any(str(state_dir) in a for a in text) and thing in text:
            return int(proc.name)
    raise AssertionError(f"no agent process for {thing} under {state_dir}")


def siwe_login(url: str, account) -> str:
    from eth_account.messages import encode_defunct

    _, n = call(url, "GET", "/v1/auth/nonce")
    issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    message = (f"{n['domain']} wants you to sign in with your Ethereum account:\n{account.address}\n\n"
               f"Test login.\n\nURI: {url}/\nVersion: 1\nChain ID: 1\nNonce: {n['nonce']}\nIssued At: {issued}")
    sig = account.sign_message(encode_defunct(text=message)).signature.hex()
    status, body = call(url, "POST", "/v1/auth/login", {"message": message, "signature": "0x" + sig.removeprefix("0x")})
    assert status == 200, body
    return body["access_token"]


def test_dashboard_live_in_chromium(tmp_path):
    chromium = _ensure_chromium()
    _ensure_playwright()
    from eth_account import Account
    from eth_account.messages import encode_defunct

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    cloud = start_cloud(tmp_path, devices=3)
    driver = None
    try:
        # --- the HTTP side first: SSE needs the same credentials as the API.
        req = urllib.request.Request(cloud.url + "/v1/events/stream")
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(req, timeout=10)
        assert denied.value.code == 401 and json.loads(denied.value.read())["error"]["code"]
        with urllib.request.urlopen(cloud.url + "/dashboard/", timeout=10) as resp:
            page = resp.read().decode()
            assert "<script src=\"app.js\"></script>" in page and "http" not in page.split("<body>")[1]
            assert "default-src 'self'" in resp.headers["content-security-policy"]

        wallet = Account.create()
        submitted: list[str] = []
        env = {**os.environ, "IG3_URL": cloud.url, "IG3_API_KEY": cloud.api_key, "ARTIFACTS": str(ARTIFACTS),
               "CHROMIUM": chromium}
        driver = subprocess.Popen(["node", str(HERE / "drive.mjs")], cwd=HERE, env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=open(tmp_path / "drive.log", "wb"),  # noqa: SIM115
                                  text=True, bufsize=1)
        assert driver.stdin is not None and driver.stdout is not None
        killed = None
        done = False
        for line in driver.stdout:
            req_ = json.loads(line)
            step = req_["step"]
            if step == "submit":
                status, task = call(cloud.url, "POST", "/v1/tasks", CHAT, token=cloud.api_key)
                assert status in (200, 201, 202), task
                submitted.append(task["id"])
                answer = {"task_id": task["id"]}
            elif step == "kill":
                killed = sorted(req_["things"])[0]
                os.kill(agent_pid(cloud.state_dir, killed), signal.SIGKILL)
                answer = {"thing": killed}
            elif step == "wallet":
                answer = {"address": wallet.address}
            elif step == "sign":
                sig = wallet.sign_message(encode_defunct(hexstr=req_["message"])).signature.hex()
                answer = {"signature": "0x" + sig.removeprefix("0x")}
            elif step == "done":
                done = True
                answer = {}
            else:
                answer = {"error": f"unknown step {step}"}
            driver.stdin.write(json.dumps(answer) + "\n")
            driver.stdin.flush()
            if done:
                driver.stdin.close()
                break
        rc = driver.wait(timeout=30)
        log = (tmp_path / "drive.log").read_text()
        assert rc == 0 and done, f"browser driver failed (rc={rc}):\n{log[-4000:]}"
        assert killed is not None
        for shot in ("01-login", "02-devices", "03-task", "04-offline", "05-wallet"):
            assert (ARTIFACTS / f"{shot}.png").stat().st_size > 5000

        # --- one task's own stream: the owner sees it through to COMPLETED; another wallet gets a 404.
        task_id = submitted[0]
        events = sse_events(cloud.url, f"/v1/tasks/{task_id}/events", cloud.api_key, until="task")
        assert events[-1][0] == "task" and events[-1][1]["id"] == task_id
        assert events[-1][1]["status"] == "COMPLETED" and events[-1][1]["route"] in ("edge", "cloud")
        other = siwe_login(cloud.url, Account.create())
        status, body = call(cloud.url, "GET", f"/v1/tasks/{task_id}/events", token=other)
        assert status == 404 and body["error"]["code"] == "task_not_found"
        # ... and the network summary is open to any signed-in caller, without accounts in it.
        events = sse_events(cloud.url, "/v1/events/stream", other, until="summary", timeout_s=20)
        summary = events[-1][1]
        assert summary["devices"]["online"] == 2 and killed in {o["thing"] for o in summary["offline"]}
        assert summary["tasks"]["completed"] >= 1
        assert "account" not in json.dumps(summary)
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        assert stop_cloud(cloud) == 0
