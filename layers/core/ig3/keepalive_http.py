"""One kept-alive HTTP connection per thread, standard library only.

The transport under the JSON clients the Lambda packages carry without an HTTP library
(``ig3.evm.rpc.JsonRpcClient``, ``ig3.rag.stores.QdrantRestStore``; issue #9 keeps those packages
small). ``http.client`` connections are not thread-safe, so each thread keeps its own. A request
that fails on a *reused* connection with a disconnect (the server closed it while idle) is sent
once more on a fresh one — callers only send requests that are safe to repeat. Replies are read
up to ``max_bytes`` (a larger one is an error, never buffered whole).
"""

from __future__ import annotations

import http.client
import threading


class TransportError(Exception):
    """Refused, timed out, TLS, protocol, disconnect, or a reply over the size limit."""


class KeepAliveHttp:
    def __init__(self, host: str, port: int | None, *, https: bool, timeout_s: float, max_bytes: int):
        self.host, self.port, self.https = host, port, https
        self.timeout_s, self.max_bytes = timeout_s, max_bytes
        self._local = threading.local()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        if self.https:
            import ssl

            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        self._local.conn = conn
        return conn, False

    def close(self) -> None:
        """Close this thread's connection (the next request opens a new one)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def send(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        """(status, body) of one request; ``TransportError`` when no reply came back whole."""
        where = f"{self.host}:{self.port}" if self.port else self.host
        for attempt in (0, 1):
            conn, reused = self._connection()
            try:
                conn.request(method, target, body=body, headers=headers)
                response = conn.getresponse()
                raw = response.read(self.max_bytes + 1)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if reused and attempt == 0:
                    continue  # the server closed an idle kept-alive connection: once more, freshly
                raise TransportError(f"{type(exc).__name__} from {where}") from exc
            except (OSError, http.client.HTTPException) as exc:  # refused, timeout, TLS, protocol
                self.close()
                raise TransportError(f"{type(exc).__name__} from {where}: {exc}") from exc
            if response.will_close:
                self.close()
            if len(raw) > self.max_bytes:
                self.close()
                raise TransportError(f"response from {where} over {self.max_bytes} bytes")
            return response.status, raw
        raise AssertionError("unreachable")  # pragma: no cover
