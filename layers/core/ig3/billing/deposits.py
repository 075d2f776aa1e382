"""On-chain deposits -> credits: native transfers and ERC-20 ``Transfer`` logs to the treasury.

How it stays exact:
- **Confirmations.** Only blocks with at least N confirmations are read (a block is
  confirmed once by itself, so the newest readable block is ``head - N + 1``). A reorg shallower
  than N never reaches a block that was read, so nothing credited can be un-mined by it.
- **Idempotent by (tx hash, log index).** Each deposit credits with the reference
  ``<chain id>:<tx hash>:<log index>`` (``native`` for a plain value transfer); the ledger entry
  id is that reference, written with ``attribute_not_exists``. Re-scanning a range, two
  scanners racing, a crash between crediting and saving the cursor: each deposit credits once.
- **Cursor with its block hash.** After a range is credited the cursor stores the last block's
  number *and hash*. The next run first checks that hash is still on the canonical chain; if
  not, a reorg deeper than N happened (the confirmation depth was too small for this chain)
  and the scanner stops with ``DeepReorg`` for an operator instead of guessing — credits are
  never silently reversed or duplicated. Saving the cursor is a conditional write on the
  previous cursor, so two scanners cannot move it backwards.

Native transfers have no logs, so they are found by reading each confirmed block's
transactions (``to == treasury``, ``value > 0``, receipt status 1). Amounts convert with
configured rates (micro-credits per wei / per token base unit, decimal strings) rounded down:
a deposit never credits more than it paid for.

The chain is read over plain JSON-RPC (``RpcChain``: ``ig3.evm.rpc``, stdlib HTTP with
keep-alive): block number, blocks, receipts and logs are all it needs. web3 did this before at
~0.6 s of cold start and ~55 MB in the function's package (issue #9). Entry points: the ``deposits`` function (scheduled) and, for the local cloud, a loop::

    python -m ig3.billing.deposits --loop --interval 5
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any, Protocol

from ig3.billing.service import BillingService

# keccak256("Transfer(address,address,uint256)")
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


class Chain(Protocol):
    """What the scanner reads, in JSON-RPC shapes (hex quantities, hex data)."""

    def chain_id(self) -> int: ...

    def block_number(self) -> int: ...

    def get_block(self, number: int, full_transactions: bool = False) -> dict[str, Any]: ...

    def get_transaction_receipt(self, tx_hash: str) -> dict[str, Any]: ...

    def get_logs(self, flt: dict[str, Any]) -> list[dict[str, Any]]: ...


class RpcChain:
    """``Chain`` over an EVM node's JSON-RPC (``eth_*`` methods)."""

    def __init__(self, url: str, *, timeout_s: float = 10.0, client: Any | None = None):
        if client is None:
            from ig3.evm.rpc import JsonRpcClient

            client = JsonRpcClient(url, timeout_s=timeout_s)
        self.client = client

    def chain_id(self) -> int:
        return _int(self.client.call("eth_chainId", []))

    def block_number(self) -> int:
        return _int(self.client.call("eth_blockNumber", []))

    def get_block(self, number: int, full_transactions: bool = False) -> dict[str, Any]:
        block = self.client.call("eth_getBlockByNumber", [hex(number), full_transactions])
        if block is None:
            raise LookupError(f"block {number} not found")
        return block

    def get_transaction_receipt(self, tx_hash: str) -> dict[str, Any]:
        receipt = self.client.call("eth_getTransactionReceipt", [tx_hash])
        if receipt is None:
            raise LookupError(f"no receipt for {tx_hash}")
        return receipt

    def get_logs(self, flt: dict[str, Any]) -> list[dict[str, Any]]:
        query = dict(flt)
        for key in ("fromBlock", "toBlock"):
            if isinstance(query.get(key), int):
                query[key] = hex(query[key])
        return list(self.client.call("eth_getLogs", [query]) or [])


class DeepReorg(RuntimeError):
    """The block the cursor points at is no longer canonical: a reorg deeper than N confirmations."""


@dataclass(frozen=True)
class Cursor:
    block: int
    block_hash: str


class CursorStore(Protocol):
    def load(self, key: str) -> Cursor | None: ...

    def save(self, key: str, cursor: Cursor, previous: Cursor | None) -> bool: ...


class MemoryCursorStore:
    def __init__(self) -> None:
        self.cursors: dict[str, Cursor] = {}

    def load(self, key: str) -> Cursor | None:
        return self.cursors.get(key)

    def save(self, key: str, cursor: Cursor, previous: Cursor | None) -> bool:
        if self.cursors.get(key) != previous:
            return False
        self.cursors[key] = cursor
        return True


class DynamoCursorStore:
    def __init__(self, table: str, client: Any | None = None):
        self.table = table
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("dynamodb")
        return self._client

    def load(self, key: str) -> Cursor | None:
        item = self.client.get_item(
            TableName=self.table, Key={"cursor": {"S": key}}, ConsistentRead=True
        ).get("Item")
        return Cursor(int(item["block"]["N"]), item["block_hash"]["S"]) if item else None

    def save(self, key: str, cursor: Cursor, previous: Cursor | None) -> bool:
        args: dict[str, Any] = {
            "TableName": self.table,
            "Item": {
                "cursor": {"S": key},
                "block": {"N": str(cursor.block)},
                "block_hash": {"S": cursor.block_hash},
                "updated_at": {"N": str(int(time.time()))},
            },
        }
        if previous is None:
            args["ConditionExpression"] = "attribute_not_exists(#c)"
            args["ExpressionAttributeNames"] = {"#c": "cursor"}
        else:
            args["ConditionExpression"] = "block_hash = :h AND #b = :b"
            args["ExpressionAttributeNames"] = {"#b": "block"}
            args["ExpressionAttributeValues"] = {
                ":h": {"S": previous.block_hash},
                ":b": {"N": str(previous.block)},
            }
        try:
            self.client.put_item(**args)
            return True
        except self.client.exceptions.ConditionalCheckFailedException:
            return False


@dataclass(frozen=True)
class DepositConfig:
    treasury: str
    confirmations: int
    native_rate: Decimal | None  # micro-credits per wei; None: native deposits are not accepted
    token_rates: dict[str, Decimal] = field(default_factory=dict)  # lowercase token address -> per base unit
    start_block: int = 0
    max_blocks_per_run: int = 500

    def __post_init__(self) -> None:
        if self.confirmations < 1:
            raise ValueError("confirmations must be >= 1")
        if not (self.treasury.startswith("0x") and len(self.treasury) == 42):
            raise ValueError("treasury must be a 0x-prefixed 20-byte address")

    @classmethod
    def from_env(cls) -> DepositConfig:
        env = os.environ.get
        native = env("IG3_DEPOSIT_NATIVE_RATE")
        tokens = json.loads(env("IG3_DEPOSIT_TOKENS", "{}"), parse_float=Decimal)
        return cls(
            treasury=(env("IG3_TREASURY_ADDRESS") or "").lower(),
            confirmations=int(env("IG3_DEPOSIT_CONFIRMATIONS", "12")),
            native_rate=Decimal(native) if native else None,
            token_rates={k.lower(): Decimal(str(v)) for k, v in tokens.items()},
            start_block=int(env("IG3_DEPOSIT_START_BLOCK", "0")),
            max_blocks_per_run=int(env("IG3_DEPOSIT_MAX_BLOCKS", "500")),
        )


@dataclass
class ScanResult:
    from_block: int | None = None
    to_block: int | None = None
    credited: list[dict[str, Any]] = field(default_factory=list)
    cursor_saved: bool = True


def _hex(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    s = str(value)
    return s if s.startswith("0x") else "0x" + s


def _int(value: Any) -> int:
    """A JSON-RPC quantity (``0x``-hex string) or an int."""
    if isinstance(value, str):
        return int(value, 16) if value[:2] in ("0x", "0X") else int(value)
    return int(value)


def _to_credits(amount: int, rate: Decimal) -> int:
    return int((Decimal(amount) * rate).to_integral_value(rounding=ROUND_DOWN))


class DepositScanner:
    def __init__(
        self,
        chain: Chain,
        billing: BillingService,
        cursors: CursorStore,
        config: DepositConfig,
        chain_id: int | None = None,
    ):
        self.chain = chain
        self.billing = billing
        self.cursors = cursors
        self.config = config
        self.chain_id = chain_id if chain_id is not None else int(chain.chain_id())
        self.key = f"{self.chain_id}:{config.treasury.lower()}"

    def scan_once(self) -> ScanResult:
        head = int(self.chain.block_number())
        safe = head - self.config.confirmations + 1
        cursor = self.cursors.load(self.key)
        if cursor is not None:
            canonical = self.chain.get_block(cursor.block)
            if _hex(canonical["hash"]) != cursor.block_hash:
                raise DeepReorg(
                    f"block {cursor.block} changed since it was credited (reorg deeper than "
                    f"{self.config.confirmations} confirmations): operator action needed"
                )
        start = cursor.block + 1 if cursor else self.config.start_block
        end = min(safe, start + self.config.max_blocks_per_run - 1)
        result = ScanResult()
        if start > end:
            return result
        result.from_block, result.to_block = start, end
        if self.config.native_rate is not None:
            result.credited += self._native(start, end)
        if self.config.token_rates:
            result.credited += self._erc20(start, end)
        last = self.chain.get_block(end)
        result.cursor_saved = self.cursors.save(self.key, Cursor(end, _hex(last["hash"])), cursor)
        return result

    def _credit(
        self, account: str, credits: int, reference: str, details: dict[str, Any]
    ) -> dict[str, Any] | None:
        if credits <= 0:
            return None  # dust below one micro-credit
        entry = self.billing.credit(account, credits, reference, details=details)
        return {"reference": reference, "account": entry.account, "amount": entry.amount}

    def _native(self, start: int, end: int) -> list[dict[str, Any]]:
        treasury = self.config.treasury.lower()
        out = []
        for number in range(start, end + 1):
            block = self.chain.get_block(number, full_transactions=True)
            for tx in block["transactions"]:
                to = tx.get("to")
                value = _int(tx["value"])
                if not to or str(to).lower() != treasury or value <= 0:
                    continue
                tx_hash = _hex(tx["hash"])
                if _int(self.chain.get_transaction_receipt(tx_hash)["status"]) != 1:
                    continue
                done = self._credit(
                    str(tx["from"]),
                    _to_credits(value, self.config.native_rate),
                    f"{self.chain_id}:{tx_hash}:native",
                    {
                        "chain_id": self.chain_id,
                        "tx_hash": tx_hash,
                        "block": number,
                        "asset": "native",
                        "raw_amount": str(value),
                    },
                )
                if done:
                    out.append(done)
        return out

    def _erc20(self, start: int, end: int) -> list[dict[str, Any]]:
        from_topic = "0x" + "0" * 24 + self.config.treasury.lower()[2:]
        tokens = [self._checksum(a) for a in self.config.token_rates]
        logs = self.chain.get_logs(
            {
                "fromBlock": start,
                "toBlock": end,
                "address": tokens,
                "topics": [TRANSFER_TOPIC, None, from_topic],
            }
        )
        out = []
        for log in logs:
            if log.get("removed"):
                continue
            token = str(log["address"]).lower()
            rate = self.config.token_rates.get(token)
            topics = [_hex(t) for t in log["topics"]]
            if rate is None or len(topics) != 3 or topics[0] != TRANSFER_TOPIC or topics[2] != from_topic:
                continue
            sender = "0x" + topics[1][-40:]
            value = int(_hex(log["data"]), 16) if _hex(log["data"]) != "0x" else 0
            tx_hash = _hex(log["transactionHash"])
            done = self._credit(
                sender,
                _to_credits(value, rate),
                f"{self.chain_id}:{tx_hash}:{_int(log['logIndex'])}",
                {
                    "chain_id": self.chain_id,
                    "tx_hash": tx_hash,
                    "block": _int(log["blockNumber"]),
                    "asset": token,
                    "raw_amount": str(value),
                },
            )
            if done:
                out.append(done)
        return out

    def _checksum(self, address: str) -> str:
        from ig3.evm.keys import to_checksum_address

        return to_checksum_address(address)


def deposits_configured() -> bool:
    return bool(os.environ.get("IG3_CHAIN_RPC_URL") and os.environ.get("IG3_TREASURY_ADDRESS"))


def scanner_from_env() -> DepositScanner:
    from ig3.billing.wiring import billing_service
    from ig3.config import table_name

    url = os.environ.get("IG3_CHAIN_RPC_URL")
    if not url:
        raise RuntimeError("missing environment variable IG3_CHAIN_RPC_URL")
    return DepositScanner(
        RpcChain(url, timeout_s=10), billing_service(), DynamoCursorStore(table_name("deposit_cursors")), DepositConfig.from_env()
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m ig3.billing.deposits", description="Credit on-chain deposits."
    )
    p.add_argument(
        "--loop", action="store_true", help="keep scanning (the local cloud's stand-in for the schedule)"
    )
    p.add_argument("--interval", type=float, default=5.0)
    args = p.parse_args(argv)
    scanner = scanner_from_env()
    while True:
        result = scanner.scan_once()
        sys.stdout.write(
            json.dumps({"from": result.from_block, "to": result.to_block, "credited": len(result.credited)})
            + "\n"
        )
        sys.stdout.flush()
        if not args.loop:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    raise SystemExit(main())
