"""Concurrency and failure halfway, on the real adapters (moto server) with injected faults;
the client helper over real HTTP."""

from __future__ import annotations

import threading
import time

import pytest

from devices._events import serve_http
from did._keys import secp256k1_identity
from ig3.devices.challenges import DynamoChallengeStore
from ig3.devices.client import RegistrationError, register_device
from ig3.devices.model import ChallengeRequest, RegisterRequest
from ig3.devices.provisioning import BotoIotProvisioner
from ig3.devices.service import RegistrationService, device_id_for
from ig3.devices.store import DynamoDeviceStore
from ig3.did.local import make_device_identity, publish_local_document
from ig3.did.messages import registration_message
from ig3.did.resolvers import LocalRegistryResolver
from ig3.errors import DomainError
from ig3.events import EventBridgePublisher

OWNER = "0x" + "12" * 20


def _service(env, *, iot_client=None, events=None) -> RegistrationService:
    return RegistrationService(
        resolver=LocalRegistryResolver(env["IG3_TABLE_DID_REGISTRY"]),
        challenges=DynamoChallengeStore(env["IG3_TABLE_DEVICE_CHALLENGES"]),
        devices=DynamoDeviceStore(env["IG3_TABLE_DEVICES"]),
        iot=BotoIotProvisioner(iot_client),
        events=events or EventBridgePublisher(env["IG3_EVENT_BUS"]),
        chain_id=3338,
    )


def _attempt(svc: RegistrationService, ident, **extra):
    ch = svc.challenge(ChallengeRequest(did=ident.did), domain="gw.test")
    msg = registration_message(
        domain=ch.domain, did=ch.did, nonce=ch.nonce, chain_id=ch.chain_id, expires_at=ch.expires_at
    )
    return ch, RegisterRequest(did=ident.did, nonce=ch.nonce, signature=ident.sign(msg), owner=OWNER, **extra)


class FailingIot:
    """The real boto3 iot client, except that one operation fails as IoT Core would."""

    def __init__(self, real, fail_on: str):
        self._real, self._fail_on = real, fail_on
        self.exceptions = real.exceptions

    def __getattr__(self, name):
        attr = getattr(self._real, name)
        if name != self._fail_on:
            return attr

        def fail(**kwargs):
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, name)

        return fail


class FailingEvents:
    def publish(self, events):
        raise RuntimeError("EventBridge rejected 1 events: ['InternalFailure']")


def _thing_exists(iot, thing):
    try:
        iot.describe_thing(thingName=thing)
        return True
    except iot.exceptions.ResourceNotFoundException:
        return False


def _certs(iot):
    return {c["certificateId"]: c["status"] for c in iot.list_certificates(pageSize=250)["certificates"]}


def test_concurrent_registrations_of_one_did_yield_one_device(reg_env, iot, ddb):
    ident = secp256k1_identity()
    publish_local_document(reg_env["IG3_TABLE_DID_REGISTRY"], ident.document)
    svc = _service(reg_env)
    requests = [_attempt(svc, ident)[1] for _ in range(6)]  # six valid nonces, one DID
    barrier, outcomes = threading.Barrier(len(requests)), []

    def run(req):
        barrier.wait()
        try:
            outcomes.append(("ok", svc.register(req)))
        except DomainError as exc:
            outcomes.append((exc.code, exc.status))

    threads = [threading.Thread(target=run, args=(r,)) for r in requests]
    certs_before = _certs(iot)
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ok = [o[1] for o in outcomes if o[0] == "ok"]
    refused = [o for o in outcomes if o[0] != "ok"]
    assert len(outcomes) == 6 and ok, outcomes
    assert all(status == 409 for _, status in refused), refused  # registration_in_progress / conflict
    thing = device_id_for(ident.did)
    assert {r.device_id for r in ok} == {thing}
    # one thing, one record, exactly one active certificate on it; every other new cert revoked
    principals = iot.list_thing_principals(thingName=thing)["principals"]
    assert len(principals) == 1
    new_certs = {cid: st for cid, st in _certs(iot).items() if cid not in certs_before}
    assert list(new_certs.values()).count("ACTIVE") == 1 and len(new_certs) == len(ok)
    assert principals[0].endswith(next(cid for cid, st in new_certs.items() if st == "ACTIVE"))
    by_did = ddb.query(
        TableName=reg_env["IG3_TABLE_DEVICES"],
        IndexName="by_did",
        KeyConditionExpression="did = :d",
        ExpressionAttributeValues={":d": {"S": ident.did}},
    )
    assert len(by_did["Items"]) == 1


@pytest.mark.parametrize(
    "fail_on", ["create_keys_and_certificate", "attach_policy", "attach_thing_principal"]
)
def test_iot_failure_after_the_nonce_leaves_no_half_device(reg_env, iot, ddb, fail_on):
    ident = secp256k1_identity()
    publish_local_document(reg_env["IG3_TABLE_DID_REGISTRY"], ident.document)
    broken = _service(reg_env, iot_client=FailingIot(iot, fail_on))
    ch, req = _attempt(broken, ident)
    certs_before = _certs(iot)
    with pytest.raises(DomainError) as err:
        broken.register(req)
    assert err.value.status == 503 and err.value.code == "provisioning_failed"
    thing = device_id_for(ident.did)
    assert not _thing_exists(iot, thing)
    assert _certs(iot) == certs_before  # the certificate it created is gone again
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.get_policy(policyName=reg_env["IG3_IOT_POLICY_PREFIX"] + thing)
    assert (
        ddb.get_item(TableName=reg_env["IG3_TABLE_DEVICES"], Key={"device_id": {"S": thing}}).get("Item")
        is None
    )
    # the nonce stays consumed; a new challenge works
    good = _service(reg_env)
    with pytest.raises(DomainError) as again:
        good.register(req)
    assert again.value.code == "nonce_used"
    assert good.register(_attempt(good, ident)[1]).device_id == thing


def test_event_failure_during_rotation_restores_the_previous_registration(reg_env, iot, ddb):
    ident = secp256k1_identity()
    publish_local_document(reg_env["IG3_TABLE_DID_REGISTRY"], ident.document)
    good = _service(reg_env)
    first = good.register(_attempt(good, ident, capabilities={"chip": "M1"})[1])
    store = DynamoDeviceStore(reg_env["IG3_TABLE_DEVICES"])
    before = store.get(first.device_id)
    certs_before = _certs(iot)

    broken = _service(reg_env, events=FailingEvents())
    with pytest.raises(DomainError) as err:
        broken.register(_attempt(broken, ident, capabilities={"chip": "M2"})[1])
    assert err.value.status == 503 and err.value.code == "registration_failed"
    after = store.get(first.device_id)
    assert after.cert_id == before.cert_id and after.capabilities == {"chip": "M1"}
    assert after.version == before.version + 2  # written, then restored: never rolled backwards
    assert _certs(iot) == certs_before  # new cert deleted, the old one still ACTIVE
    assert certs_before[first.credentials.certificate_id] == "ACTIVE"
    assert iot.list_thing_principals(thingName=first.device_id)["principals"] == [
        first.credentials.certificate_arn
    ]


def test_event_failure_on_first_registration_removes_everything(reg_env, iot, ddb):
    ident = secp256k1_identity()
    publish_local_document(reg_env["IG3_TABLE_DID_REGISTRY"], ident.document)
    broken = _service(reg_env, events=FailingEvents())
    certs_before = _certs(iot)
    with pytest.raises(DomainError):
        broken.register(_attempt(broken, ident)[1])
    thing = device_id_for(ident.did)
    assert not _thing_exists(iot, thing) and _certs(iot) == certs_before
    assert (
        ddb.get_item(TableName=reg_env["IG3_TABLE_DEVICES"], Key={"device_id": {"S": thing}}).get("Item")
        is None
    )


def test_client_helper_registers_over_http(reg_env, service, monkeypatch):
    from ig3_functions.api.handler import handler

    base, stop = serve_http(handler)
    try:
        monkeypatch.setenv("IG3_PUBLIC_HOST", base.split("://")[1])
        key, did, doc = make_device_identity()
        publish_local_document(reg_env["IG3_TABLE_DID_REGISTRY"], doc)
        kw = dict(
            capabilities={"chip": "M1"},
            models=[{"name": "smollm2-135m-instruct"}],
            location={"lat": 48.1, "lon": 11.6},
            owner=OWNER,
            region="eu-central",
        )
        first = register_device(base, key, **kw)
        assert first["did"] == did and first["device_id"] == device_id_for(did) and not first["rotated"]
        second = register_device(base, key, **kw)
        assert (
            second["rotated"]
            and second["credentials"]["certificate_id"] != first["credentials"]["certificate_id"]
        )
        # errors carry the gateway's code
        stranger_key, _, _ = make_device_identity()
        with pytest.raises(RegistrationError) as err:
            register_device(base, stranger_key, **kw)
        assert err.value.status == 404 and err.value.code == "unknown_did"
        # a challenge naming another domain is never signed
        monkeypatch.setenv("IG3_PUBLIC_HOST", "phish.example")
        with pytest.raises(RegistrationError) as err:
            register_device(base, key, **kw)
        assert err.value.code == "domain_mismatch"
    finally:
        stop()


def test_deadline_nonce_expires_between_peek_and_consume(reg_env):
    """The consume condition (not the peek) is what enforces expiry."""
    store = DynamoChallengeStore(reg_env["IG3_TABLE_DEVICE_CHALLENGES"])
    c = store.issue(did="did:peaq:x", chain_id=3338, domain="gw.test", ttl_s=30, now=time.time())
    with pytest.raises(DomainError) as err:
        store.consume(c.nonce, "did:peaq:x", now=c.expires_at + 0.001)
    assert err.value.code == "nonce_expired"
    with pytest.raises(DomainError) as err:
        store.consume(c.nonce, "did:peaq:y", now=time.time())
    assert err.value.code == "nonce_did_mismatch"
    assert store.consume(c.nonce, "did:peaq:x", now=time.time()).nonce == c.nonce
    with pytest.raises(DomainError) as err:
        store.consume(c.nonce, "did:peaq:x", now=time.time())
    assert err.value.code == "nonce_used"


def test_shared_template_policy_mode(reg_env, iot):
    """AWS mode: the deployment's template policy is attached, never created or deleted per device."""
    import json
    import uuid

    from ig3.devices.service import Caller

    shared = f"ig3-t-device-{uuid.uuid4().hex[:6]}"
    thing_var = "${iot:Connection.Thing.ThingName}"
    iot.create_policy(
        policyName=shared,
        policyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "iot:Connect",
                        "Resource": f"arn:aws:iot:*:*:client/{thing_var}",
                    }
                ],
            }
        ),
    )
    group = f"ig3-t-group-{uuid.uuid4().hex[:6]}"  # missing: created on first use
    svc = _service(reg_env)
    svc.iot = BotoIotProvisioner(thing_group=group, shared_policy=shared)
    ident = secp256k1_identity()
    publish_local_document(reg_env["IG3_TABLE_DID_REGISTRY"], ident.document)
    first = svc.register(_attempt(svc, ident)[1])
    second = svc.register(_attempt(svc, ident)[1])
    arn1, arn2 = first.credentials.certificate_arn, second.credentials.certificate_arn
    assert [p["policyName"] for p in iot.list_attached_policies(target=arn2)["policies"]] == [shared]
    assert iot.list_attached_policies(target=arn1)["policies"] == []  # rotated cert detached and revoked
    assert first.device_id in iot.list_things_in_thing_group(thingGroupName=group)["things"]
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.get_policy(policyName=reg_env["IG3_IOT_POLICY_PREFIX"] + first.device_id)
    record = svc.deregister(first.device_id, Caller(OWNER, "wallet"))
    assert record.status == "deregistered"
    assert iot.get_policy(policyName=shared)["policyName"] == shared  # the template survives
    assert iot.list_targets_for_policy(policyName=shared)["targets"] == []
    assert not _thing_exists(iot, first.device_id)


def test_one_nonce_used_twice_at_once_registers_once(reg_env, iot):
    ident = secp256k1_identity()
    publish_local_document(reg_env["IG3_TABLE_DID_REGISTRY"], ident.document)
    svc = _service(reg_env)
    _, req = _attempt(svc, ident)
    barrier, outcomes = threading.Barrier(4), []

    def run():
        barrier.wait()
        try:
            outcomes.append(("ok", svc.register(req).credentials.certificate_id))
        except DomainError as exc:
            outcomes.append((exc.code, exc.status))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [o[0] for o in outcomes].count("ok") == 1, outcomes
    assert all(o == ("nonce_used", 400) for o in outcomes if o[0] != "ok"), outcomes
    assert len(iot.list_thing_principals(thingName=device_id_for(ident.did))["principals"]) == 1
