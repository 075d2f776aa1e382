"""Registration through the api function (API Gateway proxy events) on moto: IoT, DynamoDB, events."""

from __future__ import annotations

import json
import time

import pytest

from devices._events import call
from did._keys import ed25519_identity, secp256k1_identity, sr25519_identity
from ig3.devices.challenges import DynamoChallengeStore
from ig3.devices.service import device_id_for
from ig3.did.ids import to_checksum_address
from ig3.did.local import publish_local_document
from ig3.did.messages import registration_message
from ig3.wire import Heartbeat, ModelInfo

OWNER = "0x" + "ab" * 20
CAPS = {"chip": "M1", "memory_gb": 16, "gpu_cores": 8, "accelerators": ["metal"]}
MODELS = [{"name": "smollm2-135m-instruct", "quant": "Q4_1", "ctx": 2048}]
LOCATION = {"lat": 52.52, "lon": 13.405}


@pytest.fixture
def api(service):
    from ig3_functions.api.handler import handler

    return handler


def _publish(env, ident):
    publish_local_document(env["IG3_TABLE_DID_REGISTRY"], ident.document)
    return ident


def _challenge(api, did, **extra):
    return call(api, "POST", "/v1/devices/challenge", {"did": did, **extra})


def _signed_body(ident, ch, **overrides):
    message = registration_message(
        domain=ch["domain"],
        did=ch["did"],
        nonce=ch["nonce"],
        chain_id=ch["chain_id"],
        expires_at=ch["expires_at"],
    )
    body = {
        "did": ident.did,
        "nonce": ch["nonce"],
        "signature": ident.sign(message),
        "capabilities": CAPS,
        "models": MODELS,
        "location": LOCATION,
        "owner": OWNER,
        "region": "eu-central",
    }
    body.update(overrides)
    return body


def _register(api, ident, ch=None, **overrides):
    if ch is None:
        status, ch = _challenge(api, ident.did)
        assert status == 200, ch
    return call(api, "POST", "/v1/devices/register", _signed_body(ident, ch, **overrides))


def _record(ddb, env, device_id):
    return ddb.get_item(
        TableName=env["IG3_TABLE_DEVICES"], Key={"device_id": {"S": device_id}}, ConsistentRead=True
    ).get("Item")


def _thing_exists(iot, thing):
    try:
        iot.describe_thing(thingName=thing)
        return True
    except iot.exceptions.ResourceNotFoundException:
        return False


def _cert_count(iot):
    return len(iot.list_certificates(pageSize=250)["certificates"])


def _events(env, sqs_client, device_id, want=1, wait=5.0):
    """This device's events from the test queue (others' stay visible for their own tests)."""
    found, deadline = [], time.time() + wait
    while len(found) < want and time.time() < deadline:
        for m in sqs_client.receive_message(
            QueueUrl=env["events_queue"], MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=1
        ).get("Messages", []):
            event = json.loads(m["Body"])
            if event["detail"].get("device_id") == device_id:
                found.append(event)
                sqs_client.delete_message(QueueUrl=env["events_queue"], ReceiptHandle=m["ReceiptHandle"])
    return sorted(found, key=lambda e: e["detail"]["ts"])


@pytest.fixture
def sqs(moto_endpoint):
    import boto3

    return boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")


def _assert_nothing_written(iot, ddb, env, did, certs_before):
    device_id = device_id_for(did)
    assert _record(ddb, env, device_id) is None
    assert not _thing_exists(iot, device_id)
    assert _cert_count(iot) == certs_before


# -- the happy path ---------------------------------------------------------------------------------


def test_register_provisions_thing_certificate_policy_record_and_event(api, reg_env, iot, ddb, sqs):
    ident = _publish(reg_env, secp256k1_identity())
    status, ch = _challenge(api, ident.did)
    assert status == 200 and ch["domain"] == "gw.test" and ch["chain_id"] == 3338 and ch["did"] == ident.did
    assert len(ch["nonce"]) == 32 and time.time() < ch["expires_at"] <= time.time() + 300

    status, body = _register(api, ident, ch)
    assert status == 201, body
    thing = device_id_for(ident.did)
    assert body["device_id"] == thing and body["rotated"] is False and body["status"] == "registered"
    assert body["verification_method"] == ident.did + "#keys-1"
    creds = body["credentials"]
    assert (
        creds["certificate_pem"].startswith("-----BEGIN CERTIFICATE")
        and "PRIVATE KEY" in creds["private_key"]
    )
    assert body["topics"]["tasks"] == f"ig3/v1/devices/{thing}/tasks" and body["iot_endpoint"]

    # IoT: thing in the group, the cert active and attached, a policy scoped to this thing only
    assert thing in iot.list_things_in_thing_group(thingGroupName=reg_env["IG3_IOT_THING_GROUP"])["things"]
    assert iot.describe_thing(thingName=thing)["attributes"]["did"] == ident.did
    assert iot.list_thing_principals(thingName=thing)["principals"] == [creds["certificate_arn"]]
    desc = iot.describe_certificate(certificateId=creds["certificate_id"])["certificateDescription"]
    assert desc["status"] == "ACTIVE"
    policies = iot.list_attached_policies(target=creds["certificate_arn"])["policies"]
    assert [p["policyName"] for p in policies] == [reg_env["IG3_IOT_POLICY_PREFIX"] + thing]
    doc = json.loads(iot.get_policy(policyName=policies[0]["policyName"])["policyDocument"])
    by_action = {s["Action"]: s for s in doc["Statement"]}
    assert by_action["iot:Connect"]["Resource"].endswith(f":client/{thing}")
    assert sorted(r.split(":topic/")[1] for r in by_action["iot:Publish"]["Resource"]) == sorted(
        [f"ig3/v1/devices/{thing}/*", "ig3/v1/tasks/*/stream"]
    )
    assert by_action["iot:Subscribe"]["Resource"][0].endswith(f":topicfilter/ig3/v1/devices/{thing}/*")

    # the registry record, and its GSIs
    item = _record(ddb, reg_env, thing)
    record = json.loads(item["doc"]["S"])
    assert item["did"]["S"] == ident.did and item["status"]["S"] == "registered"
    assert item["owner"]["S"] == to_checksum_address(OWNER) != OWNER  # stored EIP-55, like SIWE subjects
    assert record["capabilities"] == CAPS and record["models"][0]["name"] == MODELS[0]["name"]
    assert record["location"] == LOCATION and record["region"] == "eu-central"
    assert record["cert_id"] == creds["certificate_id"] and "private_key" not in item["doc"]["S"]
    by_did = ddb.query(
        TableName=reg_env["IG3_TABLE_DEVICES"],
        IndexName="by_did",
        KeyConditionExpression="did = :d",
        ExpressionAttributeValues={":d": {"S": ident.did}},
    )
    assert [i["device_id"]["S"] for i in by_did["Items"]] == [thing]

    events = _events(reg_env, sqs, thing)
    assert [e["detail-type"] for e in events] == ["DeviceRegistered"]
    assert events[0]["detail"]["event_id"] == f"DeviceRegistered:{thing}:{creds['certificate_id']}"

    # GET /v1/devices/{id} (the registry route) serves the record as written here
    status, view = call(api, "GET", f"/v1/devices/{thing}", resource="/v1/devices/{id}",
                        path_params={"device_id": thing})
    assert status == 200 and view["did"] == ident.did and view["status"] == "registered"
    assert view["capabilities"] == CAPS and "cert_arn" not in view and "private_key" not in view

    # the nonce was single-use
    status, err = _register(api, ident, ch)
    assert status == 400 and err["error"]["code"] == "nonce_used"


def test_reregistration_rotates_credentials(api, reg_env, iot, ddb):
    ident = _publish(reg_env, secp256k1_identity(form="eip155"))
    status, first = _register(api, ident)
    assert status == 201, first
    status, second = _register(api, ident, capabilities={"chip": "M1 Pro"})
    assert status == 200 and second["rotated"] is True and second["device_id"] == first["device_id"]
    old, new = first["credentials"], second["credentials"]
    assert old["certificate_id"] != new["certificate_id"]
    assert (
        iot.describe_certificate(certificateId=old["certificate_id"])["certificateDescription"]["status"]
        == "REVOKED"
    )
    assert iot.list_attached_policies(target=old["certificate_arn"])["policies"] == []
    assert iot.list_thing_principals(thingName=first["device_id"])["principals"] == [new["certificate_arn"]]
    group = iot.list_things_in_thing_group(thingGroupName=reg_env["IG3_IOT_THING_GROUP"])["things"]
    assert group.count(first["device_id"]) == 1
    item = _record(ddb, reg_env, first["device_id"])
    record = json.loads(item["doc"]["S"])
    assert record["registrations"] == 2 and record["cert_id"] == new["certificate_id"]
    assert record["capabilities"] == {"chip": "M1 Pro"} and item["pending_revocations"]["L"] == []


@pytest.mark.parametrize("make", [ed25519_identity, sr25519_identity], ids=["ed25519", "sr25519"])
def test_substrate_key_dids_register(api, reg_env, iot, make):
    ident = _publish(reg_env, make())
    status, body = _register(api, ident)
    assert status == 201, body
    assert body["did"] == ident.did and _thing_exists(iot, body["device_id"])


# -- bad input: a clear 4xx and nothing written ---------------------------------------------------


def test_unknown_did(api, reg_env, iot, ddb):
    ident = secp256k1_identity()
    before = _cert_count(iot)
    status, err = _challenge(api, ident.did)
    assert status == 404 and err["error"]["code"] == "unknown_did"
    # a DID that vanishes between challenge and register
    _publish(reg_env, ident)
    _, ch = _challenge(api, ident.did)
    ddb.delete_item(TableName=reg_env["IG3_TABLE_DID_REGISTRY"], Key={"did": {"S": ident.did}})
    status, err = _register(api, ident, ch)
    assert status == 404 and err["error"]["code"] == "unknown_did"
    _assert_nothing_written(iot, ddb, reg_env, ident.did, before)
    assert DynamoChallengeStore(reg_env["IG3_TABLE_DEVICE_CHALLENGES"]).peek(ch["nonce"]) is not None


def test_expired_document(api, reg_env, iot, ddb):
    before = _cert_count(iot)
    gone = _publish(reg_env, secp256k1_identity(expires_at=time.time() - 1))
    status, err = _challenge(api, gone.did)
    assert status == 401 and err["error"]["code"] == "did_document_expired"
    # expires between challenge and register
    ident = _publish(reg_env, secp256k1_identity(expires_at=time.time() + 600))
    _, ch = _challenge(api, ident.did)
    publish_local_document(
        reg_env["IG3_TABLE_DID_REGISTRY"], ident.document.model_copy(update={"expires_at": time.time() - 1})
    )
    status, err = _register(api, ident, ch)
    assert status == 401 and err["error"]["code"] == "did_document_expired"
    for did in (gone.did, ident.did):
        _assert_nothing_written(iot, ddb, reg_env, did, before)


def test_expired_nonce(api, reg_env, iot, ddb):
    ident = _publish(reg_env, secp256k1_identity())
    store = DynamoChallengeStore(reg_env["IG3_TABLE_DEVICE_CHALLENGES"])
    old = store.issue(did=ident.did, chain_id=3338, domain="gw.test", ttl_s=300, now=time.time() - 301)
    ch = {
        "nonce": old.nonce,
        "did": old.did,
        "domain": old.domain,
        "chain_id": old.chain_id,
        "expires_at": old.expires_at,
    }
    before = _cert_count(iot)
    status, err = _register(api, ident, ch)
    assert status == 400 and err["error"]["code"] == "nonce_expired"
    _assert_nothing_written(iot, ddb, reg_env, ident.did, before)


def test_reused_nonce_writes_nothing_new(api, reg_env, iot, ddb):
    ident = _publish(reg_env, secp256k1_identity())
    _, ch = _challenge(api, ident.did)
    assert _register(api, ident, ch)[0] == 201
    before, item = _cert_count(iot), _record(ddb, reg_env, device_id_for(ident.did))
    status, err = _register(api, ident, ch)
    assert status == 400 and err["error"]["code"] == "nonce_used"
    assert _cert_count(iot) == before and _record(ddb, reg_env, device_id_for(ident.did)) == item


def test_nonce_for_another_did(api, reg_env, iot, ddb):
    alice, mallory = _publish(reg_env, secp256k1_identity()), _publish(reg_env, secp256k1_identity())
    _, ch = _challenge(api, alice.did)
    before = _cert_count(iot)
    stolen = {**ch, "did": mallory.did}  # mallory signs for herself with alice's nonce
    status, err = _register(api, mallory, stolen)
    assert status == 400 and err["error"]["code"] == "nonce_did_mismatch"
    _assert_nothing_written(iot, ddb, reg_env, mallory.did, before)
    assert _register(api, alice, ch)[0] == 201  # alice's nonce was not burnt


def test_signature_by_a_key_not_in_the_document(api, reg_env, iot, ddb):
    ident, impostor = _publish(reg_env, secp256k1_identity()), secp256k1_identity()
    _, ch = _challenge(api, ident.did)
    body = _signed_body(impostor, ch, did=ident.did)
    before = _cert_count(iot)
    status, err = call(api, "POST", "/v1/devices/register", body)
    assert status == 401 and err["error"]["code"] == "signature_mismatch"
    _assert_nothing_written(iot, ddb, reg_env, ident.did, before)
    # a signature over another domain's message fails the same way
    wrong_domain = _signed_body(ident, {**ch, "domain": "evil.example"})
    status, err = call(api, "POST", "/v1/devices/register", wrong_domain)
    assert status == 401 and err["error"]["code"] == "signature_mismatch"
    assert DynamoChallengeStore(reg_env["IG3_TABLE_DEVICE_CHALLENGES"]).peek(ch["nonce"]) is not None


@pytest.mark.parametrize("did", ["did:peaq:0x1234", "did:key:z6Mk", "did:peaq:0x" + "g" * 40, "", "x" * 129])
def test_malformed_did(api, did):
    status, err = _challenge(api, did)
    assert status == 400 and err["error"]["code"] in ("invalid_did", "validation_error")


@pytest.mark.parametrize("sig", ["0x" + "zz" * 65, "0x" + "ab" * 30, "not hex", "0x" + "ab" * 66])
def test_malformed_signature(api, reg_env, iot, ddb, sig):
    ident = _publish(reg_env, secp256k1_identity())
    _, ch = _challenge(api, ident.did)
    before = _cert_count(iot)
    status, err = _register(api, ident, ch, signature=sig)
    assert status == 400 and err["error"]["code"] == "invalid_signature"
    _assert_nothing_written(iot, ddb, reg_env, ident.did, before)


def test_chain_id_mismatch(api, reg_env, iot, ddb):
    ident = _publish(reg_env, secp256k1_identity())
    status, err = _challenge(api, ident.did, chain_id=2241)
    assert status == 400 and err["error"]["code"] == "chain_id_mismatch"
    _, ch = _challenge(api, ident.did, chain_id=3338)
    before = _cert_count(iot)
    status, err = _register(api, ident, ch, chain_id=9990)
    assert status == 400 and err["error"]["code"] == "chain_id_mismatch"
    # a key bound (eip155) to krest cannot register on peaq
    krest = _publish(reg_env, secp256k1_identity(form="eip155", chain_id=2241))
    status, err = _register(api, krest)
    assert status == 401 and err["error"]["code"] == "chain_id_mismatch"
    for did in (ident.did, krest.did):
        _assert_nothing_written(iot, ddb, reg_env, did, before)


@pytest.mark.parametrize(
    "overrides,code",
    [
        ({"capabilities": {f"k{i}": "v" * 300 for i in range(30)}}, "capabilities_too_large"),  # 9 KB
        ({"capabilities": {f"k{i}": 1 for i in range(65)}}, "capabilities_too_large"),
        ({"models": [{"name": f"m{i}"} for i in range(33)]}, "models_too_large"),
        ({"capabilities": {"blob": "x" * 300_000}}, "payload_too_large"),
    ],
)
def test_oversized_payloads(api, reg_env, iot, ddb, overrides, code):
    ident = _publish(reg_env, secp256k1_identity())
    _, ch = _challenge(api, ident.did)
    before = _cert_count(iot)
    status, err = _register(api, ident, ch, **overrides)
    assert status == 413 and err["error"]["code"] == code
    _assert_nothing_written(iot, ddb, reg_env, ident.did, before)


@pytest.mark.parametrize(
    "body",
    [
        {"did": "did:peaq:0x" + "1" * 40},  # missing fields
        {"did": "did:peaq:0x" + "1" * 40, "nonce": "NOTHEX", "signature": "0x00", "owner": OWNER},
        {"did": "did:peaq:0x" + "1" * 40, "nonce": "a" * 32, "signature": "0x" + "00" * 65, "owner": "me"},
        {
            "did": "did:peaq:0x" + "1" * 40,
            "nonce": "a" * 32,
            "signature": "0x" + "00" * 65,
            "owner": "0xAbab" + "ab" * 18,
        },  # mixed case that is not the EIP-55 checksum
        {
            "did": "did:peaq:0x" + "1" * 40,
            "nonce": "a" * 32,
            "signature": "0x" + "00" * 65,
            "owner": OWNER,
            "location": {"lat": 91, "lon": 0},
        },
        {
            "did": "did:peaq:0x" + "1" * 40,
            "nonce": "a" * 32,
            "signature": "0x" + "00" * 65,
            "owner": OWNER,
            "capabilities": {"bad key!": 1},
        },
    ],
)
def test_invalid_bodies(api, body):
    status, err = call(api, "POST", "/v1/devices/register", body)
    assert status == 400 and err["error"]["code"] == "validation_error"


def test_not_json(api):
    status, err = call(api, "POST", "/v1/devices/challenge", raw_body="{nope")
    assert status == 400 and err["error"]["code"] == "invalid_json"


# -- deregistration --------------------------------------------------------------------------------


def test_deregister_revokes_and_forgets(api, reg_env, iot, ddb, sqs, live):
    ident = _publish(reg_env, secp256k1_identity())
    _, body = _register(api, ident)
    thing, creds = body["device_id"], body["credentials"]
    live.apply_heartbeats(
        [
            Heartbeat(
                thing=thing,
                ts=time.time(),
                region="eu-central",
                models=[ModelInfo(name="smollm2-135m-instruct")],
            )
        ]
    )
    assert live.get(thing) is not None
    path = f"/v1/devices/{thing}"
    kw = {"resource": "/v1/devices/{id}", "path_params": {"device_id": thing}}

    assert call(api, "DELETE", path, **kw)[0] == 401
    status, err = call(
        api, "DELETE", path, principal={"principal": "0x" + "cd" * 20, "principal_type": "wallet"}, **kw
    )
    assert status == 403 and err["error"]["code"] == "not_device_owner"
    assert _thing_exists(iot, thing)

    status, view = call(
        api,
        "DELETE",
        path,
        principal={"principal": OWNER.upper().replace("0X", "0x"), "principal_type": "wallet"},
        **kw,
    )
    assert status == 200 and view["status"] == "deregistered" and "cert_id" not in view
    assert (
        iot.describe_certificate(certificateId=creds["certificate_id"])["certificateDescription"]["status"]
        == "REVOKED"
    )
    assert not _thing_exists(iot, thing)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.get_policy(policyName=reg_env["IG3_IOT_POLICY_PREFIX"] + thing)
    assert live.get(thing) is None
    assert _record(ddb, reg_env, thing)["status"]["S"] == "deregistered"
    assert [e["detail-type"] for e in _events(reg_env, sqs, thing, want=2)] == [
        "DeviceRegistered",
        "DeviceDeregistered",
    ]
    # idempotent, and the device can come back (a fresh registration, not a rotation)
    assert (
        call(api, "DELETE", path, principal={"principal": ident.did, "principal_type": "did"}, **kw)[0] == 200
    )
    status, again = _register(api, ident)
    assert status == 201 and again["rotated"] is False and _thing_exists(iot, thing)


def test_deregister_unknown_device(api):
    status, err = call(
        api,
        "DELETE",
        "/v1/devices/ig3-nope",
        resource="/v1/devices/{id}",
        path_params={"device_id": "ig3-nope"},
        principal={"principal": OWNER},
    )
    assert status == 404 and err["error"]["code"] == "device_not_found"
