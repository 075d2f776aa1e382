"""Deposits against web3's in-process chain (EthereumTesterProvider, py-evm): real transactions,
real blocks and receipts, real logs; reorgs by reverting to a snapshot and mining another branch.

The scanner reads that chain the way it reads a node in production: ``RpcChain`` (ig3.evm.rpc) over
HTTP JSON-RPC, from a loopback server that hands each request to the test chain (web3's request
pipeline, which formats params for eth-tester) and answers in the node wire format (hex quantities
and data). web3 drives the chain from the test side only.

The ERC-20 is a minimal contract assembled below: each call emits a standard
``Transfer(address indexed from, address indexed to, uint256 value)`` log with from = caller —
exactly the log shape the scanner reads from any ERC-20 (it keeps no balances; the scanner
never asks for them).
"""

from __future__ import annotations

from decimal import Decimal

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ig3.billing.deposits import (
    TRANSFER_TOPIC,
    DeepReorg,
    DepositConfig,
    DepositScanner,
    MemoryCursorStore,
    RpcChain,
)
from ig3.billing.pricing import price_book
from ig3.billing.reconcile import reconcile
from ig3.billing.service import BillingService
from ig3.billing.store import MemoryBillingStore

N = 3  # confirmations
ETH = 10**18


def transfer_emitter_initcode() -> bytes:
    sig = bytes.fromhex(TRANSFER_TOPIC[2:])
    runtime = (
        bytes.fromhex("602035" "600052" "600035" "33")
        + b"\x7f"
        + sig  # value->mem[0]; to; caller; topic0
        + bytes.fromhex("6020" "6000" "a3" "00")
    )  # LOG3(mem[0:32], topic0, caller, to); STOP
    init_len = 11
    init = bytes([0x60, len(runtime), 0x80, 0x60, init_len, 0x60, 0x00, 0x39, 0x60, 0x00, 0xF3])
    assert len(init) == init_len
    return init + runtime


def _wire(value):
    """web3's Python-side values -> the JSON-RPC wire format a node sends (hex quantities and data)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_wire(v) for v in value]
    raise TypeError(type(value))


class ChainRpcServer:
    """The test chain behind a real HTTP JSON-RPC endpoint on 127.0.0.1."""

    def __init__(self, w3):
        self.calls: list[str] = []
        lock = threading.Lock()  # eth-tester is not thread-safe
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.calls.append(req["method"])
                reply = {"jsonrpc": "2.0", "id": req["id"]}
                try:
                    with lock:
                        reply["result"] = _wire(w3.manager.request_blocking(req["method"], req["params"]))
                except Exception as exc:  # noqa: BLE001 — a node answers errors as JSON-RPC errors
                    reply["error"] = {"code": -32000, "message": str(exc)[:200]}
                body = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def chain():
    from web3 import EthereumTesterProvider, Web3

    provider = EthereumTesterProvider()
    w3 = Web3(provider)
    tester = provider.ethereum_tester
    accounts = w3.eth.accounts
    token = w3.eth.get_transaction_receipt(
        w3.eth.send_transaction({"from": accounts[0], "data": transfer_emitter_initcode()})
    )["contractAddress"]
    impostor = w3.eth.get_transaction_receipt(
        w3.eth.send_transaction({"from": accounts[0], "data": transfer_emitter_initcode()})
    )["contractAddress"]
    server = ChainRpcServer(w3)
    rpc = RpcChain(server.url, timeout_s=10)
    rpc.server = server
    yield w3, tester, accounts, token, impostor, rpc
    rpc.client.close()
    server.close()


def scanner_for(rpc, treasury, token, store=None):
    svc = BillingService(store or MemoryBillingStore(), price_book())
    config = DepositConfig(
        treasury=treasury.lower(),
        confirmations=N,
        native_rate=Decimal("1e-12"),
        token_rates={token.lower(): Decimal("0.5")},
    )
    return DepositScanner(rpc, svc, MemoryCursorStore(), config), svc


def token_transfer(w3, token, sender, to, value):
    data = bytes.fromhex(to[2:].lower().rjust(64, "0")) + value.to_bytes(32, "big")
    return w3.eth.send_transaction({"from": sender, "to": token, "data": data, "gas": 100_000})


def test_native_and_erc20_deposits_credit_once_after_n_confirmations(chain):
    w3, tester, accounts, token, impostor, rpc = chain
    treasury, alice, bob = accounts[9], accounts[1], accounts[2]
    scanner, svc = scanner_for(rpc, treasury, token)
    w3.eth.send_transaction({"from": alice, "to": treasury, "value": 2 * ETH})
    token_transfer(w3, token, bob, treasury, 1_000_000)
    token_transfer(w3, token, bob, accounts[3], 5_000)  # not to the treasury
    token_transfer(w3, impostor, bob, treasury, 9_999_999)  # an unlisted contract emitting the same event
    w3.eth.send_transaction({"from": alice, "to": accounts[4], "value": ETH})  # not to the treasury
    first = scanner.scan_once()
    # The last N-1 blocks are not confirmed yet: the impostor's and the last native tx's blocks.
    assert first.to_block == w3.eth.block_number - N + 1
    assert svc.balance(alice).total == 2_000_000  # 2 ETH at 1e-12 micro-credits/wei = 2 credits
    assert svc.balance(bob).total == 500_000  # 1,000,000 base units at 0.5
    tester.mine_blocks(N)
    again = scanner.scan_once()
    assert again.credited == []  # nothing new; the impostor never counts
    assert scanner.scan_once().from_block is None  # caught up
    # Re-scanning everything from scratch (a lost cursor) credits nothing twice.
    rescan = DepositScanner(rpc, svc, MemoryCursorStore(), scanner.config)
    rescan.scan_once()
    assert svc.balance(alice).total == 2_000_000 and svc.balance(bob).total == 500_000
    deposits = [e for e in svc.store.iter_entries() if e.kind == "deposit"]
    assert len(deposits) == 2 and all(e.reference.count(":") == 2 for e in deposits)
    assert {e.reference.rsplit(":", 1)[1] for e in deposits} == {"native", "0"}  # (tx hash, log index)
    assert reconcile(svc.store).ok


def test_a_reorg_shallower_than_n_drops_the_unconfirmed_deposit(chain):
    w3, tester, accounts, token, _, rpc = chain
    treasury, alice, carol = accounts[9], accounts[1], accounts[5]
    scanner, svc = scanner_for(rpc, treasury, token)
    tester.mine_blocks(N)
    scanner.scan_once()
    fork_point = tester.take_snapshot()
    w3.eth.send_transaction({"from": alice, "to": treasury, "value": 5 * ETH})
    token_transfer(w3, token, alice, treasury, 2_000)
    assert (
        w3.eth.block_number
        - w3.eth.get_transaction(w3.eth.get_block(w3.eth.block_number - 1)["transactions"][0])["blockNumber"]
        + 1
        == N - 1
    )
    # (each transaction mined its own block: the native deposit has N-1 confirmations, the token one N-2)
    assert scanner.scan_once().credited == []
    tester.revert_to_snapshot(fork_point)  # reorg: that branch is gone ...
    w3.eth.send_transaction({"from": carol, "to": treasury, "value": ETH})  # ... another one wins
    tester.mine_blocks(N + 2)
    credited = scanner.scan_once().credited
    assert [c["account"] for c in credited] == [carol.lower()]
    assert svc.balance(alice).total == 0 and svc.balance(carol).total == 1_000_000
    assert reconcile(svc.store).ok


def test_a_reorg_deeper_than_n_stops_the_scanner_for_an_operator(chain):
    w3, tester, accounts, token, _, rpc = chain
    treasury, alice = accounts[9], accounts[1]
    scanner, svc = scanner_for(rpc, treasury, token)
    fork_point = tester.take_snapshot()
    w3.eth.send_transaction({"from": alice, "to": treasury, "value": ETH})
    tester.mine_blocks(N + 1)
    assert len(scanner.scan_once().credited) == 1
    tester.revert_to_snapshot(fork_point)
    tester.mine_blocks(N + 5)  # a longer branch without the deposit replaces the credited blocks
    with pytest.raises(DeepReorg, match="operator"):
        scanner.scan_once()
    assert svc.balance(alice).total == 1_000_000  # credited once; not silently reversed or repeated


def test_deposits_into_dynamodb_with_the_cursor_table(chain, aws_env):
    from ig3.billing.deposits import DynamoCursorStore
    from ig3.billing.dynamo import DynamoBillingStore

    w3, tester, accounts, token, _, rpc = chain
    treasury, dave = accounts[8], accounts[6]
    svc = BillingService(DynamoBillingStore.from_env(), price_book())
    cursors = DynamoCursorStore(aws_env["IG3_TABLE_DEPOSIT_CURSORS"])
    config = DepositConfig(
        treasury=treasury.lower(),
        confirmations=N,
        native_rate=Decimal("1e-12"),
        token_rates={token.lower(): Decimal("0.5")},
    )
    token_transfer(w3, token, dave, treasury, 4_000)
    tester.mine_blocks(N)
    s1 = DepositScanner(rpc, svc, cursors, config)
    s1.scan_once()
    assert cursors.load(s1.key).block == w3.eth.block_number - N + 1
    stale = DepositScanner(rpc, svc, cursors, config)
    stale_cursor = cursors.load(s1.key)
    tester.mine_blocks(2)
    s1.scan_once()
    # A second scanner holding an old cursor cannot move it backwards.
    assert cursors.save(stale.key, stale_cursor, previous=stale_cursor) is False
    assert cursors.save(stale.key, stale_cursor, previous=None) is False
    assert cursors.load(s1.key).block == w3.eth.block_number - N + 1
    assert svc.balance(dave).total == 2_000


def test_the_scanner_reads_the_chain_over_json_rpc(chain):
    w3, tester, accounts, token, _, rpc = chain
    treasury, erin = accounts[7], accounts[3]
    scanner, svc = scanner_for(rpc, treasury, token)
    assert scanner.chain_id == w3.eth.chain_id  # eth_chainId over HTTP
    w3.eth.send_transaction({"from": erin, "to": treasury, "value": 3 * ETH})
    tester.mine_blocks(N)
    (credit,) = scanner.scan_once().credited
    assert credit["account"] == erin.lower() and credit["amount"] == 3_000_000
    assert {"eth_chainId", "eth_blockNumber", "eth_getBlockByNumber", "eth_getTransactionReceipt",
            "eth_getLogs"} <= set(rpc.server.calls)
    with pytest.raises(LookupError):
        rpc.get_block(10**6)  # null from the node: not a block
