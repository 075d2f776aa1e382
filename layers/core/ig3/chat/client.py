"""HTTP side of ``ig3 chat``: urllib (stdlib, no event loop to own in a REPL), streaming SSE.

Login: an API key is used as is; a wallet key file (hex private key) signs in by SIWE — nonce
from ``GET /v1/auth/nonce``, an EIP-4361 message naming the gateway's domain and URI, signed
with eth-account (imported only on this path: it is heavy), exchanged at ``POST /v1/auth/login``
for a bearer token. The key never leaves this process; only the signature does.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from ig3.chat.conversation import AnswerStats, RouteInfo, sse_events


class GatewayError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def _error_of(exc: urllib.error.HTTPError) -> GatewayError:
    try:
        body = json.loads(exc.read() or b"null") or {}
        e = body.get("error", {}) if isinstance(body, dict) else {}
    except ValueError:
        e = {}
    return GatewayError(exc.code, str(e.get("code") or e.get("type") or "error"), str(e.get("message") or exc.reason))


@dataclass
class StreamResult:
    text: str
    route: RouteInfo
    stats: AnswerStats
    finish_reason: str | None


class GatewayClient:
    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 120.0):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def _req(self, method: str, path: str, body: Any | None = None) -> urllib.request.Request:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("content-type", "application/json")
        if self.token:
            req.add_header("authorization", f"Bearer {self.token}")
        return req

    def call(self, method: str, path: str, body: Any | None = None) -> Any:
        try:
            with urllib.request.urlopen(self._req(method, path, body), timeout=self.timeout_s) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise _error_of(exc) from None

    def models(self) -> list[str]:
        return [m["id"] for m in (self.call("GET", "/v1/models") or {}).get("data", [])]

    def login_with_wallet(self, key_file: Path) -> str:
        """SIWE sign-in with the private key in ``key_file``; keeps and returns the bearer token."""
        from eth_account import Account
        from eth_account.messages import encode_defunct

        from ig3.identity.siwe import SiweMessage

        account = Account.from_key(key_file.read_text().strip())
        nonce = self.call("GET", "/v1/auth/nonce")
        scheme = urlsplit(self.base_url).scheme or "http"
        chain_ids = nonce.get("chain_ids") or [1]
        message = SiweMessage(
            domain=nonce["domain"], address=account.address, uri=f"{scheme}://{nonce['domain']}",
            chain_id=int(chain_ids[0]), nonce=nonce["nonce"],
            issued_at=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            statement="Sign in to the iG3 gateway from ig3 chat.",
        ).to_text()
        signature = Account.sign_message(encode_defunct(text=message), account.key).signature.hex()
        body = self.call("POST", "/v1/auth/login", {"message": message, "signature": "0x" + signature.removeprefix("0x")})
        self.token = body["access_token"]
        return self.token

    def stream_chat(self, messages: list[dict[str, str]], model: str, *, max_tokens: int | None = None,
                    on_delta: Callable[[str], None] = lambda _t: None,
                    on_route: Callable[[RouteInfo], None] = lambda _r: None) -> StreamResult:
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": True,
                                "stream_options": {"include_usage": True}}
        if max_tokens:
            body["max_tokens"] = max_tokens
        started = time.perf_counter()
        try:
            resp = urllib.request.urlopen(self._req("POST", "/v1/chat/completions", body), timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            raise _error_of(exc) from None
        with resp:
            route = RouteInfo.from_headers(dict(resp.headers.items()))
            on_route(route)
            parts: list[str] = []
            first: float | None = None
            usage_tokens: int | None = None
            finish: str | None = None
            for event in sse_events(_lines(resp)):
                if "error" in event:
                    e = event["error"] or {}
                    raise GatewayError(resp.status, str(e.get("code") or "stream_error"), str(e.get("message")))
                if event.get("usage"):
                    usage_tokens = event["usage"].get("completion_tokens")
                for choice in event.get("choices") or []:
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        if first is None:
                            first = time.perf_counter()
                        parts.append(delta)
                        on_delta(delta)
                    finish = choice.get("finish_reason") or finish
            ended = time.perf_counter()
        stats = AnswerStats(completion_tokens=usage_tokens, first_token_s=(first - started) if first else None,
                            generation_s=(ended - first) if first else 0.0, total_s=ended - started)
        return StreamResult(text="".join(parts), route=route, stats=stats, finish_reason=finish)


def _lines(resp: Any) -> Iterator[bytes]:
    while True:
        line = resp.readline()
        if not line:
            return
        yield line
