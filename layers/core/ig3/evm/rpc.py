"""A JSON-RPC 2.0 client over HTTP(S): one kept-alive ``http.client`` connection per thread.

What web3's ``HTTPProvider`` did for us, in the stdlib: POST ``{"jsonrpc", "id", "method",
"params"}``, return the response object. Keep-alive matters: the deposit scanner reads hundreds of
blocks a run, and a fresh TLS handshake per request would cost more than the reads. A request that
fails on a reused connection (the server closed it while idle) is retried once on a new one;
everything else is the caller's to retry.

- ``request(method, params)`` -> the raw response dict (``result`` or ``error``), for callers
  that interpret node errors themselves (the DID resolver's strategies).
- ``call(method, params)`` -> ``result``; a JSON-RPC error raises ``RpcError`` (code, message, data).
- Transport failures (connection refused, timeout, HTTP status other than 200, a body that is not
  a JSON-RPC response) raise ``RpcTransportError``.
"""
from __future__ import annotations

import itertools
import json
from typing import Any
from urllib.parse import urlsplit

from ig3.keepalive_http import KeepAliveHttp

MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class RpcTransportError(ConnectionError):
    """The endpoint could not be reached or did not answer with a JSON-RPC response."""


class RpcError(RuntimeError):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(f"JSON-RPC error {code}: {message}")
        self.code, self.message, self.data = code, message, data


class JsonRpcClient:
    def __init__(self, url: str, *, timeout_s: float = 10.0, headers: dict[str, str] | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"JSON-RPC URL must be http(s)://host[:port][/path], not {url!r}")
        self.url = url
        self.timeout_s = timeout_s
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
        if parts.username or parts.password:  # https://user:key@host/ (some providers put the key there)
            import base64

            token = base64.b64encode(f"{parts.username or ''}:{parts.password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._ids = itertools.count(1)
        self._http = KeepAliveHttp(self._host, self._port, https=self._https, timeout_s=timeout_s,
                                   max_bytes=MAX_RESPONSE_BYTES)

    # -- transport ---------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def _post(self, body: bytes) -> bytes:
        from ig3.keepalive_http import TransportError

        try:
            status, raw = self._http.send("POST", self._path, body, self._headers)
        except TransportError as exc:
            raise RpcTransportError(str(exc)) from exc
        if status != 200:
            raise RpcTransportError(f"HTTP {status} from {self._host}")
        return raw

    # -- JSON-RPC ----------------------------------------------------------------------------------
    def request(self, method: str, params: list | dict | None = None) -> dict[str, Any]:
        rid = next(self._ids)
        body = json.dumps({"jsonrpc": "2.0", "id": rid, "method": method,
                           "params": [] if params is None else params}, separators=(",", ":")).encode()
        raw = self._post(body)
        try:
            reply = json.loads(raw)
        except ValueError:
            raise RpcTransportError("the endpoint answered something that is not JSON") from None
        if not isinstance(reply, dict) or ("result" not in reply and "error" not in reply):
            raise RpcTransportError("the endpoint answered something that is not a JSON-RPC response")
        return reply

    def call(self, method: str, params: list | dict | None = None) -> Any:
        reply = self.request(method, params)
        err = reply.get("error")
        if err is not None:
            if isinstance(err, dict):
                raise RpcError(int(err.get("code", 0) or 0), str(err.get("message", "")), err.get("data"))
            raise RpcError(0, str(err))
        return reply.get("result")
