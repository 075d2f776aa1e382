"""The walking skeleton's loop, driven over HTTP against ``ig3 up`` exactly as a user would.

POST /v1/tasks -> DynamoDB + SQS -> dispatch -> MQTT -> a simulated (real) edge agent ->
result -> IoT rule -> results -> COMPLETED -> GET /v1/tasks/{id}.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def call(cloud, method, path, body=None, *, token="default", raw: bytes | None = None, headers=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(cloud.url + path, data=data, method=method, headers=headers or {})
    if token == "default":
        token = cloud.api_key
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


CHAT = {"kind": "chat", "model": "tiny-llama", "input": {"messages": [{"role": "user", "content": "Say hello"}]},
        "limits": {"max_tokens": 12}}


def test_health_and_fleet_visible(cloud):
    status, health = call(cloud, "GET", "/health", token=None)
    assert status == 200 and health["devices"] == 2
    status, body = call(cloud, "GET", "/v1/devices")
    assert status == 200
    online = [d for d in body["devices"] if d.get("live") and d["live"]["online"]]
    assert len(online) == 2, body
    assert all(d["did"].startswith("did:peaq:0x") for d in online)
    assert {m["name"] for d in online for m in d["live"]["models"]} == {"tiny-llama"}
    status, cat = call(cloud, "GET", "/v1/catalogue")
    assert status == 200 and cat["models"][0]["model"] == "tiny-llama" and cat["models"][0]["devices"] == 2


def test_task_loop_closes(cloud):
    status, task = call(cloud, "POST", "/v1/tasks?wait=25", CHAT)
    assert status == 200, task
    assert task["status"] == "COMPLETED", task
    assert task["route"] == "edge" and task["device"].startswith("ig3-")
    assert isinstance(task["output"]["text"], str) and task["output"]["finish_reason"] in ("length", "stop")
    assert task["usage"]["completion_tokens"] >= 1 and task["usage"]["prompt_tokens"] >= 1
    assert task["decision"]["winner"] == task["device"]
    status, again = call(cloud, "GET", f"/v1/tasks/{task['id']}")
    assert status == 200 and again["status"] == "COMPLETED" and again["output"] == task["output"]


def test_async_submit_then_poll_with_wait(cloud):
    body = {**CHAT, "kind": "completion", "input": {"prompt": "Once upon a time"}}
    status, task = call(cloud, "POST", "/v1/tasks", body)
    assert status == 202 and task["status"] in ("PENDING", "ASSIGNED")
    status, done = call(cloud, "GET", f"/v1/tasks/{task['id']}?wait=25")
    assert status == 200 and done["status"] == "COMPLETED", done


def test_idempotency_key_submits_once(cloud):
    h = {"Idempotency-Key": "e2e-once"}
    _, a = call(cloud, "POST", "/v1/tasks", CHAT, headers=h)
    _, b = call(cloud, "POST", "/v1/tasks", CHAT, headers=h)
    assert a["id"] == b["id"]


@pytest.mark.parametrize("method,path,body,raw,status,code", [
    ("GET", "/v1/nowhere", None, None, 404, "unknown_route"),
    ("DELETE", "/v1/tasks", None, None, 405, "method_not_allowed"),
    ("POST", "/v1/tasks", None, b"{not json", 400, "invalid_json"),
    ("POST", "/v1/tasks", None, b"[1, 2]", 400, "invalid_json"),
    ("POST", "/v1/tasks", {"kind": "chat"}, None, 400, "validation_error"),
    ("POST", "/v1/tasks", {**CHAT, "kind": "embedding"}, None, 400, "validation_error"),
    ("POST", "/v1/tasks", {**CHAT, "unexpected": 1}, None, 400, "validation_error"),
    ("POST", "/v1/tasks", None, b'{"kind": "chat", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}', 413,
     "payload_too_large"),
    ("POST", "/v1/tasks", None, b'{"kind": "chat", "pad": "' + b"x" * (300 * 1024) + b'"}', 413,
     "payload_too_large"),
    ("POST", "/v1/tasks?wait=99", CHAT, None, 400, "invalid_parameter"),
    ("GET", "/v1/tasks/tsk_doesnotexist", None, None, 404, "task_not_found"),
])
def test_bad_input_gets_a_clear_4xx_in_one_shape(cloud, method, path, body, raw, status, code):
    got, err = call(cloud, method, path, body, raw=raw)
    assert got == status, err
    assert set(err) == {"error"} and set(err["error"]) == {"type", "message", "code"}
    assert err["error"]["code"] == code


def test_credentials_are_required(cloud):
    status, err = call(cloud, "POST", "/v1/tasks", CHAT, token=None)
    assert status == 401 and err["error"]["type"] == "authentication_error"
    status, err = call(cloud, "POST", "/v1/tasks", CHAT, token="ig3_sk_0000000000000000_forged")
    assert status == 401


def test_cli_submits_and_shows_a_task(cloud):
    env = {**os.environ, "IG3_API_KEY": cloud.api_key, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "ig3.cli", "tasks", "submit", "Hello there", "--model", "tiny-llama",
                          "--max-tokens", "8", "--url", cloud.url], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "COMPLETED" in out.stdout and "edge" in out.stdout
    out = subprocess.run([sys.executable, "-m", "ig3.cli", "devices", "--url", cloud.url], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stdout.count("online") == 2, out.stdout


def test_wallet_login_then_no_balance_is_402(cloud):
    """Sign-In with Ethereum as a brand-new wallet: a valid token, but nothing to pay with."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    wallet = Account.create()
    status, nonce = call(cloud, "GET", "/v1/auth/nonce", token=None)
    assert status == 200
    host = cloud.url.split("://", 1)[1]
    issued = __import__("datetime").datetime.now(__import__("datetime").timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    message = (f"{host} wants you to sign in with your Ethereum account:\n{wallet.address}\n\nSign in to ig3.\n\n"
               f"URI: {cloud.url}\nVersion: 1\nChain ID: 3338\nNonce: {nonce['nonce']}\nIssued At: {issued}")
    signature = wallet.sign_message(encode_defunct(text=message)).signature.hex()
    status, login = call(cloud, "POST", "/v1/auth/login", {"message": message, "signature": "0x" + signature.removeprefix("0x")},
                         token=None)
    assert status == 200, login
    status, err = call(cloud, "POST", "/v1/tasks", CHAT, token=login["access_token"])
    assert status == 402 and err["error"]["code"] == "insufficient_balance", err
    status, balance = call(cloud, "GET", "/v1/billing/balance", token=login["access_token"])
    assert status == 200


def test_completed_work_is_billed_to_the_operator_exactly(cloud):
    import time

    status, task = call(cloud, "POST", "/v1/tasks?wait=25", CHAT)
    assert task["status"] == "COMPLETED"
    deadline = time.time() + 30
    while time.time() < deadline:  # the billing function settles asynchronously (EventBridge -> SQS)
        status, usage = call(cloud, "GET", "/v1/billing/usage?limit=100")
        mine = [e for e in usage["entries"] if e["reference"] == task["id"]]
        if mine:
            break
        time.sleep(1)
    else:
        raise AssertionError(f"task {task['id']} never reached the ledger")
    assert len(mine) == 1 and mine[0]["amount"] < 0
    assert mine[0]["prompt_tokens"] == task["usage"]["prompt_tokens"]
    assert mine[0]["completion_tokens"] == task["usage"]["completion_tokens"]
    # the balance is the ledger's sum (settled work) minus what is still held for work in flight
    while True:
        _, balance = call(cloud, "GET", "/v1/billing/balance")
        if balance["held"] == 0 or time.time() > deadline:
            break
        time.sleep(1)
    _, usage = call(cloud, "GET", "/v1/billing/usage?limit=100")
    assert balance["held"] == 0
    assert balance["total"] == sum(e["amount"] for e in usage["entries"])


def test_rag_collection_in_the_local_network(cloud):
    """`make up` serves RAG too: Faiss on (moto) S3, MiniLM standing in for a device's embedder."""
    status, col = call(cloud, "POST", "/v1/collections", {"name": "notes", "embedding_model": "all-MiniLM-L6-v2",
                                                        "dimension": 384, "store": "faiss"})
    assert status in (200, 201), col
    docs = [{"id": "rust", "text": "Rust is a systems programming language focused on memory safety."},
            {"id": "bread", "text": "Sourdough bread rises with wild yeast and lactic acid bacteria."},
            {"id": "peaq", "text": "peaq is a layer-1 blockchain for machine identities and DePIN networks."}]
    status, added = call(cloud, "POST", "/v1/collections/notes/documents", {"documents": docs})
    assert status in (200, 201), added
    status, hits = call(cloud, "POST", "/v1/collections/notes/query", {"query": "How does sourdough rise?", "top_k": 1})
    assert status == 200, hits
    assert hits["data"] and hits["data"][0]["document"] == "bread", hits
