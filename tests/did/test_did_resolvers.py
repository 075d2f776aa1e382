"""Resolvers: web3 against a local JSON-RPC peaq node stand-in; the local registry on moto."""

import time

import pytest

from did._keys import ed25519_identity, secp256k1_identity, sr25519_identity
from did._rpc import FakePeaqNode, mapped_account, ss58_account
from ig3.did.codec import document_to_proto_bytes, encode_attribute_value
from ig3.did.local import make_device_identity, publish_local_document
from ig3.did.resolvers import (
    DidNotFound,
    InvalidDidDocument,
    LocalRegistryResolver,
    PeaqEvmResolver,
    ResolverUnavailable,
    resolver_from_env,
)


@pytest.fixture
def node():
    n = FakePeaqNode(chain_id=3338, block_number=5_000)
    n.url = n.start()
    yield n
    n.stop()


def _resolver(node, **kw):
    kw.setdefault("retries", 0)
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("backoff_s", 0.01)
    return PeaqEvmResolver(node.url, 3338, **kw)


def _publish_evm(node, ident, **kw):
    address = ident.did.split(":")[2]
    node.put(mapped_account(address), ident.did.encode(), encode_attribute_value(ident.document), **kw)


def test_evm_did_through_the_precompile(node):
    ident = secp256k1_identity()
    _publish_evm(node, ident, created_ms=1_700_000_000_555)
    doc = _resolver(node).resolve(ident.did)
    assert doc.model_dump(
        exclude={"created_ms", "validity_block", "expires_at"}
    ) == ident.document.model_dump(exclude={"created_ms", "validity_block", "expires_at"})
    assert doc.created_ms == 1_700_000_000_555 and doc.validity_block == 2**32 - 1 and doc.expires_at is None
    assert node.count("eth_call") == 1 and node.count("peaqdid_readAttribute") == 0
    # a lower-case spelling of the same DID is the same identity
    assert _resolver(node).resolve(ident.did.lower()).id == ident.did


def test_raw_protobuf_values_decode_too(node):
    ident = secp256k1_identity()
    node.put(
        mapped_account(ident.did.split(":")[2]), ident.did.encode(), document_to_proto_bytes(ident.document)
    )
    assert _resolver(node).resolve(ident.did).id == ident.did


def test_unknown_did_is_404(node):
    with pytest.raises(DidNotFound) as err:
        _resolver(node).resolve(secp256k1_identity().did)
    assert err.value.status == 404 and err.value.code == "unknown_did"


@pytest.mark.parametrize("make", [ed25519_identity, sr25519_identity])
def test_ss58_did_through_peaqdid_rpc(node, make):
    ident = make()
    node.put(
        ss58_account(ident.did.split(":")[2]), ident.did.encode(), encode_attribute_value(ident.document)
    )
    assert _resolver(node).resolve(ident.did).verification_methods == ident.document.verification_methods
    assert node.count("peaqdid_readAttribute") == 1 and node.count("chain_getBlockHash") == 1


def test_legacy_runtime_falls_back_to_bytes32_selector(node):
    node.runtime, node.rpc_enabled = "legacy", False
    evm, sub = secp256k1_identity(), ed25519_identity()
    _publish_evm(node, evm)
    node.put(ss58_account(sub.did.split(":")[2]), sub.did.encode(), encode_attribute_value(sub.document))
    resolver = _resolver(node)
    assert resolver.resolve(evm.did).id == evm.did
    assert resolver.resolve(sub.did).id == sub.did
    calls_before = node.count("eth_call")
    resolver.clear_cache()
    resolver.resolve(evm.did)  # the unsupported new selector is remembered, not retried
    assert node.count("eth_call") == calls_before + 1


def test_evm_did_falls_back_to_peaqdid_rpc_with_the_mapped_account(node):
    node.runtime = "none"  # no DID precompile selectors at all: only the pallet's RPC is left
    ident = secp256k1_identity()
    _publish_evm(node, ident)
    assert _resolver(node).resolve(ident.did).id == ident.did
    assert node.count("peaqdid_readAttribute") == 1 and node.count("eth_call") == 2


def test_no_way_to_read_is_503(node):
    node.rpc_enabled = False  # current runtime: no bytes32 selector, no RPC -> SS58 DIDs unreadable
    with pytest.raises(ResolverUnavailable):
        _resolver(node).resolve(ed25519_identity().did)


def test_chain_mismatch_is_a_configuration_error(node):
    node.chain_id = 2241
    with pytest.raises(ResolverUnavailable) as err:
        _resolver(node).resolve(secp256k1_identity().did)
    assert err.value.code == "chain_id_mismatch" and err.value.status == 503


def test_transient_failures_are_retried(node):
    ident = secp256k1_identity()
    _publish_evm(node, ident)
    node.fail_next = 2
    assert _resolver(node, retries=2).resolve(ident.did).id == ident.did
    node.fail_next = 10
    with pytest.raises(ResolverUnavailable):
        _resolver(node, retries=1).resolve(ident.did)


def test_timeouts_become_503(node):
    node.delay_s = 1.0
    t0 = time.monotonic()
    with pytest.raises(ResolverUnavailable):
        _resolver(node, timeout_s=0.2).resolve(secp256k1_identity().did)
    assert time.monotonic() - t0 < 1.0


def test_ttl_cache(node):
    ident = secp256k1_identity()
    _publish_evm(node, ident)
    resolver = _resolver(node, cache_ttl_s=0.3)
    resolver.resolve(ident.did)
    resolver.resolve(ident.did)
    assert node.count("eth_call") == 1
    time.sleep(0.35)
    resolver.resolve(ident.did)
    assert node.count("eth_call") == 2


def test_validity_block_becomes_expiry(node):
    past, future = secp256k1_identity(), secp256k1_identity()
    _publish_evm(node, past, validity=node.block_number - 1)
    _publish_evm(node, future, validity=node.block_number + 100)
    resolver = _resolver(node, block_time_s=6.0)
    assert resolver.resolve(past.did).is_expired()
    doc = resolver.resolve(future.did)
    assert not doc.is_expired() and doc.validity_block == node.block_number + 100
    assert abs(doc.expires_at - (time.time() + 101 * 6.0)) < 5


def test_document_for_another_did_is_refused(node):
    ident, other = secp256k1_identity(), secp256k1_identity()
    node.put(
        mapped_account(ident.did.split(":")[2]), ident.did.encode(), encode_attribute_value(other.document)
    )
    with pytest.raises(InvalidDidDocument) as err:
        _resolver(node).resolve(ident.did)
    assert err.value.status == 422


def test_undecodable_document_is_422(node):
    ident = secp256k1_identity()
    node.put(mapped_account(ident.did.split(":")[2]), ident.did.encode(), b"\xff\xfe not protobuf")
    with pytest.raises(InvalidDidDocument):
        _resolver(node).resolve(ident.did)


def test_resolver_from_env_picks_peaq(node, monkeypatch):
    monkeypatch.setenv("IG3_DID_RESOLVER", "peaq")
    monkeypatch.setenv("IG3_PEAQ_RPC_URL", node.url)
    monkeypatch.setenv("IG3_PEAQ_CHAIN_ID", "3338")
    r = resolver_from_env()
    assert isinstance(r, PeaqEvmResolver) and r.rpc_url == node.url and resolver_from_env() is r


def test_local_registry(aws_env, monkeypatch):
    table = aws_env["IG3_TABLE_DID_REGISTRY"]
    key, did, doc = make_device_identity("fleet-device-1")
    assert make_device_identity("fleet-device-1")[:2] == (key, did)  # deterministic per seed
    publish_local_document(table, doc)
    sub = sr25519_identity(expires_at=time.time() - 5)
    publish_local_document(table, sub.document)
    monkeypatch.setenv("IG3_DID_RESOLVER", "local")
    resolver = resolver_from_env()
    assert isinstance(resolver, LocalRegistryResolver)
    got = resolver.resolve(did.lower())
    assert got.id == did and got.verification_methods == doc.verification_methods
    assert resolver.resolve(sub.did).is_expired()
    with pytest.raises(DidNotFound):
        resolver.resolve(secp256k1_identity().did)
