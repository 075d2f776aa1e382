"""DID resolution — the port (``DidResolver``) and its adapters.

- ``PeaqEvmResolver``: reads the document from a peaq node over its EVM JSON-RPC
  (``ig3.evm.rpc``: stdlib HTTP with keep-alive; web3 used to do this, at ~0.6 s of import and
  ~55 MB in the api function's package for a handful of calls). Strategies, in order:

  1. ``eth_call`` to the DID precompile ``0x…0800`` with ``readAttribute(address,bytes)``
     (current runtimes; the precompile maps the EVM address to its Substrate account);
  2. ``read_attribute(bytes32,bytes)`` keyed by the 32-byte account id (older runtimes, and the
     only precompile path for SS58 DIDs, whose account is not an EVM address);
  3. the node's ``peaqdid_readAttribute(account, name, at)`` RPC (peaq-pallet-did's RPC: the
     account as SS58, the name as hex bytes, a block hash; answers ``{name, value, validity,
     created}`` or null). SS58 DIDs try this first.

  A strategy the node does not know (unknown selector, method not found) is remembered and
  skipped. "Cannot find the item" is a definite not-found. Transport errors are retried with
  backoff, then become 503. The node's ``eth_chainId`` must equal the configured chain (peaq
  3338, krest 2241, agung 9990) — checked once. Documents are cached for a short TTL (their
  absolute ``expires_at`` still applies): registrations and logins resolve the same DID in bursts.

  The attribute's ``validity`` is a block number; ``expires_at`` is derived from the current
  block and the chain's block time (an estimate for the future, exact for the past).

- ``LocalRegistryResolver``: the local cloud's registry, a DynamoDB table (``did_registry``,
  pk ``did``) holding the same attribute value bytes (hex protobuf) as the chain, decoded by the
  same codec into the same model.

Both check that the document's ``id`` is the DID asked for.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Protocol

from ig3.did.codec import (
    Attribute,
    DocumentDecodeError,
    decode_attribute_return,
    decode_attribute_value,
    read_attribute_calldata,
    read_attribute_legacy_calldata,
)
from ig3.did.ids import PeaqDid, parse_did, same_did, ss58_encode
from ig3.did.model import NO_EXPIRY_BLOCK, DidDocument
from ig3.errors import NotFound, Unavailable, UnprocessableEntity
from ig3.observability import logger

DID_PRECOMPILE = "0x0000000000000000000000000000000000000800"
PEAQ_CHAINS = {3338: "peaq", 2241: "krest", 9990: "agung"}
DEFAULT_CHAIN_ID = 3338
NOT_FOUND_REASON = "Cannot find the item"

RESOLVER_ENV = "IG3_DID_RESOLVER"  # "peaq" | "local"
RPC_URL_ENV = "IG3_PEAQ_RPC_URL"
CHAIN_ID_ENV = "IG3_PEAQ_CHAIN_ID"


class DidNotFound(NotFound):
    code = "unknown_did"


class InvalidDidDocument(UnprocessableEntity):
    code = "invalid_did_document"


class ResolverUnavailable(Unavailable):
    code = "did_resolver_unavailable"


class DidResolver(Protocol):
    def resolve(self, did: str) -> DidDocument: ...


def configured_chain_id() -> int:
    return int(os.environ.get(CHAIN_ID_ENV, DEFAULT_CHAIN_ID))


class TtlCache:
    """A small thread-safe LRU with a time-to-live (per Lambda container / process)."""

    def __init__(self, ttl_s: float, max_items: int = 1024, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.max_items, self._clock = ttl_s, max_items, clock
        self._items: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            if self._clock() - hit[0] > self.ttl_s:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return hit[1]

    def put(self, key: str, value: Any) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._items[key] = (self._clock(), value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def _checked(doc: DidDocument, did: PeaqDid) -> DidDocument:
    if not same_did(doc.id, did.did):
        raise InvalidDidDocument(f"the document stored for {did.did} describes another DID")
    return doc


class _Unsupported(Exception):
    """The node does not offer this read strategy."""


class _Transport(Exception):
    """Network / node failure worth a retry."""


class PeaqEvmResolver:
    def __init__(
        self,
        rpc_url: str,
        chain_id: int = DEFAULT_CHAIN_ID,
        *,
        timeout_s: float = 5.0,
        retries: int = 2,
        backoff_s: float = 0.2,
        cache_ttl_s: float = 30.0,
        block_time_s: float = 6.0,
        attribute_name: str = "{did}",
        client: Any | None = None,
    ):
        self.rpc_url, self.chain_id = rpc_url, int(chain_id)
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.block_time_s = block_time_s
        self.attribute_name = attribute_name
        self._client = client  # an ig3.evm.rpc.JsonRpcClient (built on first use)
        self._cache = TtlCache(cache_ttl_s)
        self._chain_checked = False
        self._unsupported: set[str] = set()
        self._lock = threading.Lock()

    # -- plumbing --------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from ig3.evm.rpc import JsonRpcClient

                    # No retries inside the client: our own loop (below) decides what is retryable.
                    self._client = JsonRpcClient(self.rpc_url, timeout_s=self.timeout_s)
        return self._client

    def _rpc(self, method: str, params: list) -> Any:
        """One JSON-RPC call with retries on transport errors. Returns the raw response dict."""
        from ig3.evm.rpc import RpcTransportError

        attempt = 0
        while True:
            try:
                try:
                    response = self.client.request(method, params)
                except RpcTransportError as exc:
                    raise _Transport(str(exc)) from exc
                err = response.get("error") if isinstance(response, dict) else None
                if (
                    err
                    and isinstance(err, dict)
                    and int(err.get("code", 0)) in (-32603, -32000)
                    and "revert" not in str(err.get("message", "")).lower()
                    and NOT_FOUND_REASON not in str(err.get("message", ""))
                ):
                    raise _Transport(str(err.get("message", "node error"))[:200])
                return response
            except _Transport as exc:
                if attempt >= self.retries:
                    logger.warning("peaq rpc failed", extra={"method": method, "error": str(exc)})
                    raise ResolverUnavailable("the peaq node did not answer; try again") from None
                time.sleep(self.backoff_s * (2**attempt))
                attempt += 1

    def _result(self, method: str, params: list) -> Any:
        response = self._rpc(method, params)
        if response.get("error"):
            raise ResolverUnavailable(f"peaq node error on {method}")
        return response.get("result")

    def _check_chain(self) -> None:
        if self._chain_checked:
            return
        node_chain = int(self._result("eth_chainId", []), 16)
        if node_chain != self.chain_id:
            logger.error("peaq rpc chain mismatch", extra={"configured": self.chain_id, "node": node_chain})
            raise ResolverUnavailable(
                f"the configured peaq node serves chain {node_chain}, not {self.chain_id}",
                code="chain_id_mismatch",
            )
        self._chain_checked = True

    # -- strategies ----------------------------------------------------------------------------
    def _eth_call(self, strategy: str, data: bytes) -> Attribute | None:
        response = self._rpc("eth_call", [{"to": DID_PRECOMPILE, "data": "0x" + data.hex()}, "latest"])
        err = response.get("error")
        if err:
            text = f"{err.get('message', '')} {_revert_reason(err.get('data'))}"
            if NOT_FOUND_REASON in text:
                return None
            if "revert" in text.lower() or int(err.get("code", 0)) in (3, -32601, -32602):
                raise _Unsupported(strategy)
            raise ResolverUnavailable("peaq node error on eth_call")
        result = response.get("result") or "0x"
        if result in ("0x", ""):
            raise _Unsupported(strategy)  # no code there: not a DID precompile
        try:
            return decode_attribute_return(bytes.fromhex(result[2:]))
        except (DocumentDecodeError, ValueError):
            raise InvalidDidDocument("the DID precompile returned an undecodable Attribute") from None

    def _read_precompile(self, did: PeaqDid, name: bytes) -> Attribute | None:
        return self._eth_call("precompile", read_attribute_calldata(did.address or "", name))

    def _read_precompile_legacy(self, did: PeaqDid, name: bytes) -> Attribute | None:
        return self._eth_call("precompile_legacy", read_attribute_legacy_calldata(did.account_id, name))

    def _read_rpc(self, did: PeaqDid, name: bytes) -> Attribute | None:
        at = self._rpc("chain_getBlockHash", [])
        if at.get("error"):
            raise _Unsupported("rpc")
        response = self._rpc(
            "peaqdid_readAttribute",
            [ss58_encode(did.account_id, did.ss58_prefix or 42), "0x" + name.hex(), at.get("result")],
        )
        err = response.get("error")
        if err:
            if int(err.get("code", 0)) == -32601:
                raise _Unsupported("rpc")
            raise ResolverUnavailable("peaq node error on peaqdid_readAttribute")
        result = response.get("result")
        if result is None:
            return None
        try:
            return Attribute(
                bytes.fromhex(str(result["name"])[2:]),
                bytes.fromhex(str(result["value"])[2:]),
                int(result["validity"]),
                int(result["created"]),
            )
        except (KeyError, ValueError, TypeError):
            raise InvalidDidDocument("peaqdid_readAttribute returned an unexpected shape") from None

    def _strategies(self, did: PeaqDid) -> list[tuple[str, Callable[[PeaqDid, bytes], Attribute | None]]]:
        evm = [
            ("precompile", self._read_precompile),
            ("precompile_legacy", self._read_precompile_legacy),
            ("rpc", self._read_rpc),
        ]
        substrate = [("rpc", self._read_rpc), ("precompile_legacy", self._read_precompile_legacy)]
        return [(n, f) for n, f in (evm if did.kind == "evm" else substrate) if n not in self._unsupported]

    def _names(self, did: PeaqDid, as_given: str) -> list[bytes]:
        names = [self.attribute_name.format(did=did.did), self.attribute_name.format(did=as_given)]
        if did.kind == "evm":
            names.append(self.attribute_name.format(did=did.did.lower()))
        return list(dict.fromkeys(n.encode() for n in names))

    # -- the port --------------------------------------------------------------------------------
    def resolve(self, did: str) -> DidDocument:
        parsed = parse_did(did)
        cached = self._cache.get(parsed.did)
        if cached is not None:
            return cached
        self._check_chain()
        attribute = None
        tried = False
        for strategy, read in self._strategies(parsed):
            try:
                tried = True
                for name in self._names(parsed, did):
                    attribute = read(parsed, name)
                    if attribute is not None:
                        break
                break  # the strategy works on this node: its answer (found or not) is the answer
            except _Unsupported:
                self._unsupported.add(strategy)
                continue
        if not tried or (attribute is None and not self._strategies(parsed)):
            raise ResolverUnavailable("the peaq node offers no way to read DID attributes")
        if attribute is None:
            raise DidNotFound(f"no DID document on chain {self.chain_id} for {parsed.did}")
        doc = _checked(self._document(attribute), parsed)
        self._cache.put(parsed.did, doc)
        return doc

    def _document(self, attribute: Attribute) -> DidDocument:
        expires_at = None
        if attribute.validity < NO_EXPIRY_BLOCK:
            current = int(self._result("eth_blockNumber", []), 16)
            expires_at = time.time() + (attribute.validity - current + 1) * self.block_time_s
        try:
            return decode_attribute_value(
                attribute.value,
                created_ms=attribute.created,
                validity_block=attribute.validity,
                expires_at=expires_at,
            )
        except DocumentDecodeError as exc:
            raise InvalidDidDocument(str(exc)) from None

    def clear_cache(self) -> None:
        self._cache.clear()


def _revert_reason(data: Any) -> str:
    """Decode a Solidity ``Error(string)`` revert payload (selector 0x08c379a0); '' otherwise."""
    if not isinstance(data, str) or not data.startswith("0x08c379a0"):
        return ""
    try:
        from ig3.evm.abi import decode

        return str(decode(["string"], bytes.fromhex(data[10:]))[0])
    except Exception:  # noqa: BLE001
        return ""


class LocalRegistryResolver:
    """The local cloud's DID registry: DynamoDB items ``{did, value, created_ms, expires_at?}``."""

    def __init__(self, table_name: str, client: Any | None = None):
        self.table_name = table_name
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("dynamodb")
        return self._client

    def resolve(self, did: str) -> DidDocument:
        parsed = parse_did(did)
        try:
            item = self.client.get_item(
                TableName=self.table_name, Key={"did": {"S": parsed.did}}, ConsistentRead=True
            ).get("Item")
        except Exception as exc:  # noqa: BLE001 — botocore errors
            logger.warning("did registry read failed", extra={"error_type": type(exc).__name__})
            raise ResolverUnavailable("the DID registry did not answer; try again") from None
        if not item:
            raise DidNotFound(f"no DID document in the registry for {parsed.did}")
        try:
            doc = decode_attribute_value(
                item["value"]["S"].encode(),
                created_ms=int(item["created_ms"]["N"]) if "created_ms" in item else None,
                expires_at=float(item["expires_at"]["N"]) if "expires_at" in item else None,
                validity_block=int(item["validity_block"]["N"]) if "validity_block" in item else None,
            )
        except (DocumentDecodeError, KeyError) as exc:
            raise InvalidDidDocument(
                f"registry entry for {parsed.did} is not a DID document: {exc}"
            ) from None
        return _checked(doc, parsed)


_resolvers: dict[tuple, DidResolver] = {}
_resolvers_lock = threading.Lock()


def resolver_from_env() -> DidResolver:
    """The resolver this process is configured for (one per configuration, so its cache lives on).

    ``IG3_DID_RESOLVER``: ``peaq`` (needs ``IG3_PEAQ_RPC_URL``; ``IG3_PEAQ_CHAIN_ID`` default 3338,
    ``IG3_PEAQ_RPC_TIMEOUT_S``, ``IG3_PEAQ_RPC_RETRIES``, ``IG3_DID_CACHE_TTL_S``,
    ``IG3_PEAQ_BLOCK_TIME_S``, ``IG3_PEAQ_DID_ATTRIBUTE`` — the attribute name template, default
    ``{did}``) or ``local`` (the ``did_registry`` table). Default: ``peaq`` when an RPC URL is set.
    """
    env = os.environ.get
    kind = env(RESOLVER_ENV) or ("peaq" if env(RPC_URL_ENV) else "local")
    if kind == "peaq":
        url = env(RPC_URL_ENV)
        if not url:
            raise RuntimeError(f"{RPC_URL_ENV} is required for the peaq DID resolver")
        key: tuple = (
            "peaq",
            url,
            configured_chain_id(),
            env("IG3_PEAQ_RPC_TIMEOUT_S", "5"),
            env("IG3_PEAQ_RPC_RETRIES", "2"),
            env("IG3_DID_CACHE_TTL_S", "30"),
            env("IG3_PEAQ_BLOCK_TIME_S", "6"),
            env("IG3_PEAQ_DID_ATTRIBUTE", "{did}"),
        )
        factory: Callable[[], DidResolver] = lambda: PeaqEvmResolver(  # noqa: E731
            url,
            configured_chain_id(),
            timeout_s=float(key[3]),
            retries=int(key[4]),
            cache_ttl_s=float(key[5]),
            block_time_s=float(key[6]),
            attribute_name=key[7],
        )
    elif kind == "local":
        from ig3.config import table_name

        key = ("local", table_name("did_registry"))
        factory = lambda: LocalRegistryResolver(key[1])  # noqa: E731
    else:
        raise RuntimeError(f"{RESOLVER_ENV} must be 'peaq' or 'local', not {kind!r}")
    with _resolvers_lock:
        resolver = _resolvers.get(key)
        if resolver is None:
            resolver = _resolvers[key] = factory()
        return resolver
