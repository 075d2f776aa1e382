"""ig3.evm.rpc over real HTTP: a JSON-RPC server on a loopback port (stdlib http.server, HTTP/1.1
keep-alive), answering, erroring, failing, closing idle connections and stalling on purpose."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ig3.evm.rpc import JsonRpcClient, RpcError, RpcTransportError


class Node:
    def __init__(self):
        self.connections = 0
        self.requests: list[dict] = []
        self.mode = "ok"  # ok | error | http503 | garbage | close_after | slow
        node = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                node.connections += 1

            def do_POST(self):  # noqa: N802
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                node.requests.append({"body": req, "headers": dict(self.headers)})
                if node.mode == "http503":
                    return self._send(503, b"busy")
                if node.mode == "garbage":
                    return self._send(200, b"<html>proxy error</html>")
                if node.mode == "slow":
                    time.sleep(1.5)
                if node.mode == "error":
                    reply = {"jsonrpc": "2.0", "id": req["id"],
                             "error": {"code": -32602, "message": "invalid params", "data": "0x01"}}
                else:
                    reply = {"jsonrpc": "2.0", "id": req["id"], "result": {"method": req["method"],
                                                                           "params": req["params"]}}
                self._send(200, json.dumps(reply).encode(), close=node.mode == "close_after")

            def _send(self, status, body, close=False):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if close:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                if close:
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/rpc?x=1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def node():
    n = Node()
    yield n
    n.close()


def test_calls_reuse_one_connection(node):
    client = JsonRpcClient(node.url)
    for i in range(20):
        assert client.call("eth_getBlockByNumber", [hex(i), True]) == {
            "method": "eth_getBlockByNumber", "params": [hex(i), True]}
    assert node.connections == 1
    body = node.requests[0]["body"]
    assert body["jsonrpc"] == "2.0" and isinstance(body["id"], int)
    assert node.requests[0]["headers"]["Content-Type"] == "application/json"
    assert len({r["body"]["id"] for r in node.requests}) == 20


def test_json_rpc_errors(node):
    node.mode = "error"
    client = JsonRpcClient(node.url)
    assert client.request("eth_call", [{}])["error"]["code"] == -32602  # raw, for callers that interpret it
    with pytest.raises(RpcError) as exc:
        client.call("eth_call", [{}])
    assert (exc.value.code, exc.value.message, exc.value.data) == (-32602, "invalid params", "0x01")


@pytest.mark.parametrize("mode", ["http503", "garbage"])
def test_bad_answers_are_transport_errors(node, mode):
    node.mode = mode
    with pytest.raises(RpcTransportError):
        JsonRpcClient(node.url).call("eth_chainId")


def test_server_closing_the_connection_reconnects(node):
    node.mode = "close_after"
    client = JsonRpcClient(node.url)
    for _ in range(3):
        assert client.call("eth_chainId")["method"] == "eth_chainId"
    assert node.connections == 3


def test_idle_connection_closed_by_the_server_is_retried_once(node):
    client = JsonRpcClient(node.url)
    client.call("eth_chainId")
    # The server side drops the kept-alive socket while the client is idle.
    client._http._local.conn.sock.shutdown(2)  # noqa: SLF001 — simulate the peer's close on our socket
    client._http._local.conn.sock = None  # the next request must notice and reconnect
    assert client.call("eth_blockNumber")["method"] == "eth_blockNumber"


def test_timeout_and_refused_are_transport_errors(node):
    node.mode = "slow"
    with pytest.raises(RpcTransportError):
        JsonRpcClient(node.url, timeout_s=0.3).call("eth_chainId")
    with pytest.raises(RpcTransportError):
        JsonRpcClient("http://127.0.0.1:9", timeout_s=1).call("eth_chainId")


def test_threads_get_their_own_connection(node):
    client = JsonRpcClient(node.url)
    results: list = []

    def work():
        for _ in range(5):
            results.append(client.call("eth_chainId"))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20 and node.connections == 4


def test_basic_auth_in_the_url(node):
    url = node.url.replace("http://", "http://user:secret@")
    JsonRpcClient(url).call("eth_chainId")
    assert node.requests[-1]["headers"]["Authorization"] == "Basic dXNlcjpzZWNyZXQ="


def test_bad_urls():
    for bad in ("ftp://x", "localhost:8545", "http://"):
        with pytest.raises(ValueError):
            JsonRpcClient(bad)
