"""Results must be signed by the key the device's DID names (issue #13's "valid answer signed with the
wrong key"): the results path's verifier, as wired for the results function, reads the registry
(DynamoDB ``devices`` on the moto server) and rejects a self-consistent signature by any other key."""

from __future__ import annotations

import time
import uuid

from eth_account import Account

from ig3.devices.model import DeviceRecord
from ig3.devices.signers import RegisteredSigners
from ig3.wire import DeviceResult, TaskOutput, Usage


def _record(thing: str, did: str) -> DeviceRecord:
    now = time.time()
    return DeviceRecord(device_id=thing, thing_name=thing, did=did, owner="0x" + "11" * 20, chain_id=3338,
                        verification_method=f"{did}#keys-1", registered_at=now, updated_at=now)


def _result(thing: str) -> DeviceResult:
    return DeviceResult(task_id="t_" + uuid.uuid4().hex[:12], attempt=1, thing=thing, status="ok",
                        output=TaskOutput(text="blue", finish_reason="stop"),
                        usage=Usage(prompt_tokens=3, completion_tokens=1), model_hash="ab" * 32)


def test_results_signed_by_a_key_the_did_does_not_name_are_rejected(aws_env):
    from ig3 import config
    from ig3.devices.store import DynamoDeviceStore
    from ig3.tasks.wiring import _result_verifier
    from ig3_edge.signing import ResultSigner

    device_key, other_key = Account.create(), Account.create()
    thing = "ig3-" + uuid.uuid4().hex
    DynamoDeviceStore(config.table_name("devices")).write(
        _record(thing, f"did:peaq:{device_key.address}"), expected_version=None
    )
    verifier = _result_verifier()
    honest = ResultSigner(device_key.key.hex()).sign(_result(thing))
    forged = ResultSigner(other_key.key.hex()).sign(_result(thing))  # consistent with its own signer
    assert verifier.verify(honest)
    assert not verifier.verify(forged)
    assert verifier.verify(honest)  # cached address: same answer


def test_registered_signers_rules():
    records = {
        "evm": _record("evm", "did:peaq:0x" + "aB" * 20),
        "ss58": _record("ss58", "did:peaq:5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"),
    }
    reads: list[str] = []

    def get(thing):
        reads.append(thing)
        return records.get(thing)

    signers = RegisteredSigners(get)
    assert signers("evm") == "0x" + "aB" * 20 and signers("evm") == "0x" + "aB" * 20
    assert reads.count("evm") == 1  # a thing's DID never changes: read once
    assert signers("ss58") is None  # names no secp256k1 key: self-consistency only
    assert signers("unknown") is None and signers("unknown") is None
    assert reads.count("unknown") == 2  # unknown things are not cached (they may register later)
