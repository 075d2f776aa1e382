"""The chaos run's load generator: a separate process that drives the public API over loopback.

``python -m chaos.load --url URL --key KEY --requests N --concurrency C --out FILE``

A mix of the API's kinds of work, each with a unique prompt (no response-cache hits):
``chat`` (``POST /v1/chat/completions``), ``stream`` (the same with ``stream: true``, read to
``[DONE]``), ``embedding`` (``POST /v1/embeddings``) and ``task`` (``POST /v1/tasks`` with an
Idempotency-Key, then ``GET /v1/tasks/{id}?wait=`` until terminal). A refusal that asks for a
retry (429, 503, a dropped connection) is retried with backoff — a ``task`` under the same key,
so a retry can never create a second task. One JSON line per request goes to ``--out`` with every
attempt's status and the task id the API named (``x-ig3-task`` or the task's ``id``); progress
lines (JSON) go to stdout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import threading
import time
from typing import Any

KINDS = (("chat", 0.3), ("stream", 0.3), ("embedding", 0.2), ("task", 0.2))
RETRY_STATUSES = (429, 502, 503, 504)
MAX_TRIES = 8
TERMINAL = ("COMPLETED", "FAILED")


def kind_of(i: int, seed: int) -> str:
    r = random.Random(f"{seed}:{i}").random()
    acc = 0.0
    for kind, share in KINDS:
        acc += share
        if r < acc:
            return kind
    return KINDS[-1][0]


class Client:
    """One keep-alive connection per worker thread; reopened after any transport error."""

    def __init__(self, host: str, port: int, key: str, timeout: float):
        self.host, self.port, self.key, self.timeout = host, port, key, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> tuple[int, dict[str, str], Any]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        h = {"Authorization": f"Bearer {self.key}", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        try:
            self.conn.request(method, path, body=data, headers=h)
            resp = self.conn.getresponse()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            if stream and resp.status == 200:
                payload: Any = _read_sse(resp)
            else:
                raw = resp.read()
                try:
                    payload = json.loads(raw) if raw else None
                except ValueError:
                    payload = {"_raw": raw[:200].decode(errors="replace")}
            return resp.status, hdrs, payload
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise


def _read_sse(resp: http.client.HTTPResponse) -> dict[str, Any]:
    chunks, done, errors, text = 0, False, [], []
    for raw in resp:
        line = raw.decode(errors="replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            continue
        try:
            doc = json.loads(data)
        except ValueError:
            errors.append("bad_json")
            continue
        if "error" in doc:
            errors.append((doc["error"] or {}).get("code") or "error")
            continue
        chunks += 1
        for c in doc.get("choices") or []:
            text.append((c.get("delta") or {}).get("content") or "")
    return {"chunks": chunks, "done": done, "errors": errors, "chars": len("".join(text))}


def one(client: Client, i: int, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    tag = f"chaos {args.run}-{i}"
    rec: dict[str, Any] = {"i": i, "kind": kind, "attempts": [], "task_ids": []}
    t0 = time.time()
    if kind in ("chat", "stream"):
        path, body = (
            "/v1/chat/completions",
            {
                "model": args.chat_model,
                "max_tokens": args.max_tokens,
                "messages": [{"role": "user", "content": f"{tag}: name a colour"}],
                "stream": kind == "stream",
            },
        )
    elif kind == "embedding":
        path, body = "/v1/embeddings", {"model": args.embed_model, "input": [f"{tag}: a sentence to embed"]}
    else:
        path, body = (
            "/v1/tasks",
            {
                "kind": "chat",
                "model": args.chat_model,
                "limits": {"max_tokens": args.max_tokens},
                "input": {"messages": [{"role": "user", "content": f"{tag}: count to three"}]},
            },
        )
    headers = {"Idempotency-Key": f"chaos-{args.run}-{i}"} if kind == "task" else {}
    status, hdrs, payload = 0, {}, None
    for attempt in range(MAX_TRIES):
        try:
            status, hdrs, payload = client.request("POST", path, body, headers, stream=kind == "stream")
        except (OSError, http.client.HTTPException) as exc:
            status, hdrs, payload = -1, {}, {"error": {"code": type(exc).__name__}}
        code = (
            (payload or {}).get("error", {}).get("code")
            if isinstance(payload, dict) and isinstance(payload.get("error"), dict)
            else None
        )
        rec["attempts"].append(
            {
                "status": status,
                "code": code,
                "task": hdrs.get("x-ig3-task"),
                "request_id": hdrs.get("x-request-id"),
                "route": hdrs.get("x-ig3-route"),
            }
        )
        if hdrs.get("x-ig3-task"):
            rec["task_ids"].append(hdrs["x-ig3-task"])
        if status not in RETRY_STATUSES and status != -1:
            break
        time.sleep(min(10.0, float(hdrs.get("retry-after") or 0) or 0.5 * 2**attempt))
    rec["status"] = status
    rec["route"] = hdrs.get("x-ig3-route")
    if kind == "stream" and status == 200:
        rec["stream"] = payload
    if kind == "task" and status in (200, 202) and isinstance(payload, dict):
        tid = payload["id"]
        if tid not in rec["task_ids"]:
            rec["task_ids"].append(tid)
        seen = payload.get("status")
        deadline = time.time() + args.task_wait_s
        while seen not in TERMINAL and time.time() < deadline:
            try:
                s, _, doc = client.request("GET", f"/v1/tasks/{tid}?wait=20")
            except (OSError, http.client.HTTPException):
                time.sleep(1.0)
                continue
            if s == 200:
                seen = doc.get("status")
            else:
                time.sleep(1.0)
        rec["task_status"] = seen
        rec["route"] = payload.get("route")
    rec["elapsed_s"] = round(time.time() - t0, 3)
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.load")
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--out", required=True)
    p.add_argument("--run", default="0")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--chat-model", default="tiny-llama")
    p.add_argument("--embed-model", default="tiny-embed")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--timeout-s", type=float, default=180.0)
    p.add_argument("--task-wait-s", type=float, default=900.0)
    args = p.parse_args(argv)
    host, port = args.url.split("://", 1)[1].split(":")
    lock = threading.Lock()
    counter = iter(range(args.requests))
    done = {"n": 0, "ok": 0}
    out = open(args.out, "a", buffering=1)  # noqa: SIM115

    def worker() -> None:
        client = Client(host, int(port), args.key, args.timeout_s)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            rec = one(client, i, kind_of(i, args.seed), args)
            with lock:
                out.write(json.dumps(rec) + "\n")
                done["n"] += 1
                done["ok"] += rec["status"] == 200 or rec.get("task_status") == "COMPLETED"

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(2.0)
        with lock:
            print(json.dumps({"done": done["n"], "ok": done["ok"]}), flush=True)
    out.close()
    print(json.dumps({"done": done["n"], "ok": done["ok"], "finished": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
