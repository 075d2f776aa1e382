"""A stand-in peaq node: a real JSON-RPC HTTP server on a free loopback port.

It answers what ``PeaqEvmResolver`` asks a peaq node — ``eth_chainId``, ``eth_blockNumber``,
``eth_call`` to the DID precompile (ABI-decoding the calldata and ABI-encoding the Attribute
struct it returns), ``chain_getBlockHash`` and ``peaqdid_readAttribute`` — from a table of
attributes keyed like the pallet's storage: (32-byte account id, name). The account mapping and
the SS58 decoding are written here independently of ``ig3.did.ids``, so the resolver's own
mapping is checked rather than mirrored.

Knobs: ``runtime`` ("current": ``readAttribute(address,bytes)`` / ``read_attribute(address,bytes)``;
"legacy": only ``read_attribute(bytes32,bytes)``), ``rpc_enabled``, ``fail_next`` (answer the next
N requests with HTTP 503), ``delay_s``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import base58
from eth_abi import decode, encode
from eth_hash.auto import keccak

ATTRIBUTE = "(bytes,bytes,uint32,uint256)"


def _sel(signature: str) -> bytes:
    return keccak(signature.encode())[:4]


SEL_READ = _sel("readAttribute(address,bytes)")
SEL_READ_SNAKE = _sel("read_attribute(address,bytes)")
SEL_READ_LEGACY = _sel("read_attribute(bytes32,bytes)")


def mapped_account(address: str) -> bytes:
    return hashlib.blake2b(b"evm:" + bytes.fromhex(address[2:]), digest_size=32).digest()


def ss58_account(address: str) -> bytes:
    raw = base58.b58decode(address)
    head = 1 if raw[0] < 64 else 2
    return raw[head : head + 32]


def _revert(reason: str) -> dict[str, Any]:
    data = "0x08c379a0" + encode(["string"], [reason]).hex()
    return {"code": 3, "message": f"execution reverted: {reason}", "data": data}


class FakePeaqNode:
    def __init__(self, chain_id: int = 3338, block_number: int = 1_000_000):
        self.chain_id = chain_id
        self.block_number = block_number
        self.attributes: dict[tuple[bytes, bytes], tuple[bytes, bytes, int, int]] = {}
        self.runtime = "current"
        self.rpc_enabled = True
        self.fail_next = 0
        self.delay_s = 0.0
        self.calls: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- state -------------------------------------------------------------------------------
    def put(
        self,
        account: bytes,
        name: bytes,
        value: bytes,
        *,
        validity: int = 2**32 - 1,
        created_ms: int = 1_700_000_000_000,
    ) -> None:
        self.attributes[(account, name)] = (name, value, validity, created_ms)

    def count(self, method: str) -> int:
        return sum(1 for m in self.calls if m == method)

    # -- JSON-RPC ----------------------------------------------------------------------------
    def answer(self, method: str, params: list[Any]) -> tuple[Any, dict[str, Any] | None]:
        if method == "eth_chainId":
            return hex(self.chain_id), None
        if method == "eth_blockNumber":
            return hex(self.block_number), None
        if method == "chain_getBlockHash":
            return "0x" + hashlib.sha256(str(self.block_number).encode()).hexdigest(), None
        if method == "eth_call":
            return self._eth_call(params[0])
        if method == "peaqdid_readAttribute" and self.rpc_enabled:
            account, name = ss58_account(params[0]), bytes.fromhex(params[1][2:])
            found = self.attributes.get((account, name))
            if found is None:
                return None, None
            n, v, validity, created = found
            return {
                "name": "0x" + n.hex(),
                "value": "0x" + v.hex(),
                "validity": validity,
                "created": created,
            }, None
        return None, {"code": -32601, "message": f"Method not found: {method}"}

    def _eth_call(self, tx: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
        if tx.get("to", "").lower() != "0x0000000000000000000000000000000000000800":
            return "0x", None
        data = bytes.fromhex(tx["data"][2:])
        sel, args = data[:4], data[4:]
        if self.runtime == "current" and sel in (SEL_READ, SEL_READ_SNAKE):
            address, name = decode(["address", "bytes"], args)
            account = mapped_account(address)
        elif self.runtime == "legacy" and sel == SEL_READ_LEGACY:
            account, name = decode(["bytes32", "bytes"], args)
        else:
            return None, _revert("Unknown selector")
        found = self.attributes.get((bytes(account), bytes(name)))
        if found is None:
            return None, _revert("Cannot find the item")
        return "0x" + encode([ATTRIBUTE], [found]).hex(), None

    # -- HTTP --------------------------------------------------------------------------------
    def start(self) -> str:
        node = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with node._lock:
                    node.calls.append(body.get("method", ""))
                    failing = node.fail_next > 0
                    if failing:
                        node.fail_next -= 1
                if node.delay_s:
                    import time

                    time.sleep(node.delay_s)
                if failing:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                result, error = node.answer(body["method"], body.get("params", []))
                reply: dict[str, Any] = {"jsonrpc": "2.0", "id": body.get("id")}
                if error is not None:
                    reply["error"] = error
                else:
                    reply["result"] = result
                raw = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
