"""The clients as users meet them, against ``ig3 up`` (tiny models, one edge device):

- the Telegram bot: real Update JSON posted to ``POST /v1/telegram/webhook`` on the local API
  front, the bot function and its SQS worker running in the local cloud, python-telegram-bot
  pointed at a local Bot API stand-in that records sendMessage/editMessageText;
- ``ig3 chat`` in a real terminal (tmux send-keys / capture-pane).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from ig3.chat.client import GatewayClient
from ig3.telegram.bot import NO_BALANCE, NOT_LINKED, PLACEHOLDER, WELCOME
from tests.clients.botapi_standin import EDIT_INTERVAL_S, WEBHOOK_SECRET, update_json

pytestmark = pytest.mark.timeout(600)


def _post(url: str, body, headers: dict[str, str]) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _webhook(cloud, update, secret: str | None = WEBHOOK_SECRET):
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
    return _post(f"{cloud.url}/v1/telegram/webhook", update, headers)


def _wait(pred, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _ids():
    base = uuid.uuid4().int % 10**8 * 100
    return iter(range(base, base + 100))


def test_webhook_secret_is_enforced_and_bad_updates_are_4xx(client_cloud, botapi):
    user = 5_000_000 + uuid.uuid4().int % 10**6
    before = len(botapi.calls)
    for secret in (None, "wrong-secret"):
        status, body = _webhook(client_cloud, update_json(1, user, "/start"), secret)
        assert status == 401 and body["error"]["code"] == "invalid_webhook_secret", body
    status, body = _webhook(client_cloud, b"{not json", WEBHOOK_SECRET)
    assert status == 400 and set(body["error"]) == {"type", "message", "code"}
    status, body = _webhook(client_cloud, {"message": {}}, WEBHOOK_SECRET)
    assert status == 400 and body["error"]["code"] == "invalid_update"
    assert len(botapi.calls) == before  # nothing reached Telegram


def test_bot_start_link_balance_and_a_streamed_answer_once(client_cloud, botapi):
    user = 6_000_000 + uuid.uuid4().int % 10**6
    ids = _ids()
    status, body = _webhook(client_cloud, update_json(next(ids), user, "/start"))
    assert status == 200 and body["outcome"] == "start"
    assert botapi.calls_of("sendMessage", user)[-1].params["text"] == WELCOME

    # not linked yet: a question gets the clear "link first" answer, no model work
    _webhook(client_cloud, update_json(next(ids), user, "hello?"))
    assert botapi.calls_of("sendMessage", user)[-1].params["text"] == NOT_LINKED

    # /link -> a one-time code; the wallet owner signs in by SIWE and redeems it
    _webhook(client_cloud, update_json(next(ids), user, "/link"))
    link_text = botapi.calls_of("sendMessage", user)[-1].params["text"]
    code = link_text.split('"code": "', 1)[1].split('"', 1)[0]
    wallet = GatewayClient(client_cloud.url)
    wallet.login_with_wallet(client_cloud.state_dir / "operator-wallet.key")
    linked = wallet.call("POST", "/v1/telegram/link", {"code": code})
    assert linked["telegram_user"] == user and linked["wallet"].lower().startswith("0x")
    assert botapi.calls_of("sendMessage", user)[-1].params["text"].startswith("Linked to wallet")
    status, body = _post(f"{client_cloud.url}/v1/telegram/link", {"code": code},
                         {"authorization": f"Bearer {wallet.token}"})
    assert status == 404 and body["error"]["code"] == "link_code_not_found"  # single use

    _webhook(client_cloud, update_json(next(ids), user, "/balance"))
    assert "Available:" in botapi.calls_of("sendMessage", user)[-1].params["text"]

    _webhook(client_cloud, update_json(next(ids), user, "/model"))
    assert "ig3/auto" in botapi.calls_of("sendMessage", user)[-1].params["text"]
    _webhook(client_cloud, update_json(next(ids), user, "/model tiny-llama"))
    assert botapi.calls_of("sendMessage", user)[-1].params["text"] == "Model set to tiny-llama."

    # a question: placeholder at once, then edits as tokens stream, the last with the route
    question = update_json(next(ids), user, "Tell me a long story about edge devices.", message_id=77)
    sends_before = len(botapi.calls_of("sendMessage", user))
    status, body = _webhook(client_cloud, question)
    assert status == 200 and body["outcome"] == "queued"
    placeholder = botapi.calls_of("sendMessage", user)[-1]
    assert placeholder.params["text"] == PLACEHOLDER and placeholder.params["reply_parameters"]["message_id"] == 77
    # Telegram retries the same update: answered once
    status, body = _webhook(client_cloud, question)
    assert status == 200 and body["outcome"] == "duplicate"
    assert len(botapi.calls_of("sendMessage", user)) == sends_before + 1

    def final_edit():
        edits = botapi.calls_of("editMessageText", user)
        return edits if edits and "\n\n— " in edits[-1].params["text"] else None

    edits = _wait(final_edit, 120, "the final edit of the answer")
    assert {int(c.params["message_id"]) for c in edits} == {placeholder.result["message_id"]}
    final = edits[-1].params["text"]
    assert final.split("\n\n— ", 1)[0].strip(), "empty answer"
    assert "edge device" in final or "cloud" in final
    for a, b in zip(edits, edits[1:]):  # the final edit included: it waits out the interval too
        assert b.at - a.at >= EDIT_INTERVAL_S * 0.9, "edits faster than the rate limit"
    time.sleep(1.0)
    assert len(botapi.calls_of("editMessageText", user)) == len(edits)  # no second answer for the retry


def test_bot_says_clearly_when_the_wallet_has_no_balance(client_cloud, botapi, tmp_path):
    from eth_account import Account

    user = 7_000_000 + uuid.uuid4().int % 10**6
    ids = _ids()
    key_file = tmp_path / "empty-wallet.key"
    key_file.write_text(Account.create().key.hex())
    _webhook(client_cloud, update_json(next(ids), user, "/link"))
    code = botapi.calls_of("sendMessage", user)[-1].params["text"].split('"code": "', 1)[1].split('"', 1)[0]
    empty = GatewayClient(client_cloud.url)
    empty.login_with_wallet(key_file)
    empty.call("POST", "/v1/telegram/link", {"code": code})
    _webhook(client_cloud, update_json(next(ids), user, "hi there"))
    edits = _wait(lambda: botapi.calls_of("editMessageText", user), 60, "the bot's answer")
    assert edits[-1].params["text"] == NO_BALANCE


# --- ig3 chat in a real terminal ------------------------------------------------------------

def _tmux_available() -> None:
    if shutil.which("tmux"):
        return
    if not shutil.which("apt-get"):
        pytest.skip("tmux is missing and apt-get is unavailable to install it")
    subprocess.run(["apt-get", "install", "-y", "tmux"], capture_output=True, timeout=180)
    if not shutil.which("tmux"):
        pytest.skip("tmux could not be installed with apt-get")


class Tmux:
    def __init__(self, name: str, command: str, env: dict[str, str]):
        self.name = name
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "160", "-y", "60",
                        f"env {exports} {command}; sleep 30"], check=True)

    def send(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def type_line(self, text: str) -> None:
        self.send("-l", text)
        self.send("Enter")

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-J", "-S", "-200", "-t", self.name],
                              capture_output=True, text=True, check=True).stdout

    def wait_for(self, pred, timeout_s: float, what: str) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            s = self.screen()
            if pred(s):
                return s
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def _chat_cmd(cloud, *args: str) -> str:
    return " ".join(shlex.quote(a) for a in (sys.executable, "-m", "ig3.cli", "chat", "--url", cloud.url,
                                             "--max-tokens", "24", *args))


def test_ig3_chat_streams_answers_with_route_and_speed_in_a_terminal(client_cloud):
    _tmux_available()
    env = {"IG3_API_KEY": client_cloud.api_key, "PYTHONUNBUFFERED": "1", "TERM": "xterm-256color",
           "PATH": os.environ.get("PATH", "")}
    t = Tmux(f"ig3chat-{uuid.uuid4().hex[:8]}", _chat_cmd(client_cloud), env)
    try:
        t.wait_for(lambda s: "you> " in s and "model ig3/auto" in s, 30, "the chat prompt")
        t.type_line("What runs at the edge?")
        screen = t.wait_for(lambda s: s.count("route: ") >= 1, 90, "the first answer's route line")
        answer_line = next(line for line in screen.splitlines() if line.startswith("ai> "))
        assert len(answer_line) > len("ai> "), "no streamed text"
        route = next(line for line in screen.splitlines() if line.startswith("route: "))
        assert ("edge device ig3-" in route or "cloud" in route) and "tokens" in route and "tok/s" in route, route

        # multi-line input: a trailing backslash continues the message
        t.type_line("first line \\")
        t.wait_for(lambda s: "... " in s, 10, "the continuation prompt")
        t.type_line("second line")
        t.wait_for(lambda s: s.count("route: ") >= 2, 90, "the second answer")
        t.type_line("/model tiny-llama")
        t.wait_for(lambda s: "model tiny-llama" in s, 10, "the model switch")
        t.type_line("/exit")
    finally:
        t.kill()


def test_ig3_chat_signs_in_with_a_wallet_key_file(client_cloud):
    _tmux_available()
    env = {"PYTHONUNBUFFERED": "1", "TERM": "xterm-256color", "PATH": os.environ.get("PATH", "")}
    key = str(client_cloud.state_dir / "operator-wallet.key")
    t = Tmux(f"ig3chatw-{uuid.uuid4().hex[:8]}", _chat_cmd(client_cloud, "--wallet-key", key), env)
    try:
        t.wait_for(lambda s: "signed in with the wallet key (SIWE)" in s and "you> " in s, 30, "the SIWE sign-in")
        t.type_line("hi")
        t.wait_for(lambda s: "route: " in s, 90, "an answer as the wallet")
    finally:
        t.kill()
