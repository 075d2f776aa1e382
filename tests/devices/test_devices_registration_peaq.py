"""End to end on the chain path: the api function resolves the DID with web3 from a JSON-RPC peaq
node stand-in (precompile ``readAttribute``), verifies, and provisions on moto."""

from __future__ import annotations

import pytest

from devices._events import call
from did._keys import secp256k1_identity, sr25519_identity
from did._rpc import FakePeaqNode, mapped_account, ss58_account
from ig3.did.codec import encode_attribute_value
from ig3.did.messages import registration_message


@pytest.fixture
def peaq_api(service, monkeypatch):
    node = FakePeaqNode(chain_id=3338, block_number=42_000)
    url = node.start()
    from ig3.devices import wiring

    for k, v in {
        "IG3_DID_RESOLVER": "peaq",
        "IG3_PEAQ_RPC_URL": url,
        "IG3_PEAQ_CHAIN_ID": "3338",
        "IG3_PEAQ_RPC_RETRIES": "0",
    }.items():
        monkeypatch.setenv(k, v)
    wiring.reset()
    svc = wiring.registration_service()
    svc.remove_live_state = service.remove_live_state
    from ig3_functions.api.handler import handler

    yield handler, node
    wiring.reset()
    node.stop()


def _register(api, ident):
    status, ch = call(api, "POST", "/v1/devices/challenge", {"did": ident.did})
    if status != 200:
        return status, ch
    msg = registration_message(
        domain=ch["domain"],
        did=ch["did"],
        nonce=ch["nonce"],
        chain_id=ch["chain_id"],
        expires_at=ch["expires_at"],
    )
    return call(
        api,
        "POST",
        "/v1/devices/register",
        {"did": ident.did, "nonce": ch["nonce"], "signature": ident.sign(msg), "owner": "0x" + "11" * 20},
    )


def test_register_with_a_document_read_from_the_chain(peaq_api):
    api, node = peaq_api
    evm, sub = secp256k1_identity(form="eip155"), sr25519_identity()
    node.put(mapped_account(evm.did.split(":")[2]), evm.did.encode(), encode_attribute_value(evm.document))
    node.put(
        ss58_account(sub.did.split(":")[2]),
        sub.did.encode(),
        encode_attribute_value(sub.document),
        validity=node.block_number + 10_000,
    )
    for ident in (evm, sub):
        status, body = _register(api, ident)
        assert status == 201, body
        assert body["verification_method"] == ident.did + "#keys-1"
    assert node.count("eth_call") >= 1 and node.count("peaqdid_readAttribute") >= 1


def test_chain_expired_document_and_unknown_did(peaq_api):
    api, node = peaq_api
    old = secp256k1_identity()
    node.put(
        mapped_account(old.did.split(":")[2]),
        old.did.encode(),
        encode_attribute_value(old.document),
        validity=node.block_number - 1,
    )
    status, err = _register(api, old)
    assert status == 401 and err["error"]["code"] == "did_document_expired"
    status, err = _register(api, secp256k1_identity())
    assert status == 404 and err["error"]["code"] == "unknown_did"


def test_node_down_is_503(peaq_api):
    api, node = peaq_api
    node.fail_next = 100
    status, err = _register(api, secp256k1_identity())
    assert status == 503 and err["error"]["code"] == "did_resolver_unavailable"
