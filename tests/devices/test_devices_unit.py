"""Pure pieces of registration, and the service's bookkeeping on in-memory fakes of its ports."""

from __future__ import annotations

import time

import pytest

from did._keys import secp256k1_identity
from ig3.devices.challenges import MemoryChallengeStore
from ig3.devices.model import ChallengeRequest, Credentials, RegisterRequest
from ig3.devices.provisioning import Provisioned, device_policy
from ig3.devices.service import Caller, RegistrationService, _may_manage, device_id_for
from ig3.devices.store import MemoryDeviceStore
from ig3.did.messages import registration_message
from ig3.errors import Conflict, DomainError
from ig3.events import MemoryEventPublisher
from ig3.wire import THING_NAME_RE, device_tasks_topic

OWNER = "0x" + "34" * 20


def test_registration_message_is_stable():
    msg = registration_message(
        domain="api.ig3.example",
        did="did:peaq:0xAbC",
        nonce="00ff" * 8,
        chain_id=3338,
        expires_at=1_800_000_000.9,
    )
    assert msg == (
        b"api.ig3.example wants you to register a device with your peaq DID:\n"
        b"did:peaq:0xAbC\n\niG3 device registration\n\nVersion: 1\nChain ID: 3338\n"
        b"Nonce: 00ff00ff00ff00ff00ff00ff00ff00ff\nExpiration Time: 2027-01-15T08:00:00Z"
    )
    with pytest.raises(ValueError):
        registration_message(domain="a\nb", did="d", nonce="n", chain_id=1, expires_at=0)


def test_device_ids_are_deterministic_thing_names():
    ident = secp256k1_identity()
    thing = device_id_for(ident.did)
    assert thing == device_id_for(ident.did.lower()) and THING_NAME_RE.match(thing)
    assert device_tasks_topic(thing) == f"ig3/v1/devices/{thing}/tasks"
    assert thing != device_id_for(secp256k1_identity().did)


def test_policy_grants_only_own_topics():
    doc = device_policy("ig3-abc", "eu-west-1", "111122223333")
    resources = [
        r
        for s in doc["Statement"]
        for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])
    ]
    assert all(r.startswith("arn:aws:iot:eu-west-1:111122223333:") for r in resources)
    assert all("ig3-abc" in r or r.endswith("topic/ig3/v1/tasks/*/stream") for r in resources)
    assert {s["Action"] for s in doc["Statement"]} == {
        "iot:Connect",
        "iot:Publish",
        "iot:Subscribe",
        "iot:Receive",
    }


@pytest.mark.parametrize(
    "caller,allowed",
    [
        (Caller(OWNER.upper().replace("0X", "0x"), "wallet"), True),
        (Caller("0x" + "99" * 20, "wallet"), False),
        (Caller("ig3-dev", "device"), True),
        (Caller("ig3-other", "device"), False),
        (Caller("0x" + "99" * 20, "wallet", frozenset({"devices:admin"})), True),
    ],
)
def test_who_may_deregister(caller, allowed):
    from ig3.devices.model import DeviceRecord

    rec = DeviceRecord(
        device_id="ig3-dev",
        thing_name="ig3-dev",
        did="did:peaq:0x" + "56" * 20,
        owner=OWNER,
        chain_id=3338,
        verification_method="#k",
        registered_at=0,
        updated_at=0,
    )
    assert _may_manage(rec, caller) is allowed
    assert _may_manage(rec, Caller(rec.did.lower(), "did"))


class MemoryResolver:
    def __init__(self, *docs):
        self.docs = {d.id: d for d in docs}

    def resolve(self, did):
        from ig3.did.resolvers import DidNotFound

        if did not in self.docs:
            raise DidNotFound(did)
        return self.docs[did]


class MemoryIot:
    """Certificates per thing; ``fail_revoke`` makes revocation fail like a throttled IoT call."""

    def __init__(self):
        self.certs: dict[str, str] = {}
        self.things: set[str] = set()
        self.fail_revoke = False
        self.n = 0

    def provision(self, thing, *, attributes):
        self.n += 1
        cid = f"cert{self.n}"
        created = thing not in self.things
        self.things.add(thing)
        self.certs[cid] = "ACTIVE"
        creds = Credentials(
            certificate_id=cid,
            certificate_arn=f"arn:{cid}",
            certificate_pem="pem",
            private_key="k",
            public_key="p",
        )
        return Provisioned(
            thing, created, "pol-" + thing, created, "group", creds, [("cert", lambda: self.certs.pop(cid))]
        )

    def rollback(self, p):
        for _, step in reversed(p.undo):
            step()

    def revoke(self, thing, cert_id, policy_name):
        if self.fail_revoke:
            raise RuntimeError("ThrottlingException")
        self.certs[cert_id] = "REVOKED"

    def deprovision(self, thing, cert_ids, policy_name):
        for c in cert_ids:
            self.revoke(thing, c, policy_name)
        self.things.discard(thing)

    def endpoint(self):
        return "local"


def _register(svc, ident):
    ch = svc.challenge(ChallengeRequest(did=ident.did), domain="gw")
    msg = registration_message(
        domain="gw", did=ident.did, nonce=ch.nonce, chain_id=3338, expires_at=ch.expires_at
    )
    return svc.register(
        RegisterRequest(did=ident.did, nonce=ch.nonce, signature=ident.sign(msg), owner=OWNER)
    )


def test_a_failed_revocation_is_remembered_and_retried():
    ident = secp256k1_identity()
    iot, devices, events = MemoryIot(), MemoryDeviceStore(), MemoryEventPublisher()
    svc = RegistrationService(
        resolver=MemoryResolver(ident.document),
        challenges=MemoryChallengeStore(),
        devices=devices,
        iot=iot,
        events=events,
        chain_id=3338,
    )
    first = _register(svc, ident)
    iot.fail_revoke = True
    second = _register(svc, ident)  # committed: the rotation stands even though revoking failed
    rec = devices.get(first.device_id)
    assert rec.cert_id == second.credentials.certificate_id and rec.pending_revocations == ["cert1"]
    assert iot.certs["cert1"] == "ACTIVE"
    iot.fail_revoke = False
    _register(svc, ident)
    rec = devices.get(first.device_id)
    assert rec.pending_revocations == [] and iot.certs == {
        "cert1": "REVOKED",
        "cert2": "REVOKED",
        "cert3": "ACTIVE",
    }
    assert events.types() == ["DeviceRegistered"] * 3
    svc.deregister(first.device_id, Caller(OWNER, "wallet"))
    assert set(iot.certs.values()) == {"REVOKED"} and devices.get(first.device_id).status == "deregistered"
    assert events.types()[-1] == "DeviceDeregistered"


def test_memory_challenge_store_semantics():
    store = MemoryChallengeStore()
    now = time.time()
    c = store.issue(did="did:a", chain_id=1, domain="d", ttl_s=900, now=now)
    assert c.expires_at == round(now + 300, 3)  # capped at five minutes
    token = store.acquire_lease("thing", 60, now)
    with pytest.raises(Conflict):
        store.acquire_lease("thing", 60, now + 1)
    store.release_lease("thing", "not-mine")
    with pytest.raises(Conflict):
        store.acquire_lease("thing", 60, now + 1)
    store.release_lease("thing", token)
    store.acquire_lease("thing", 60, now + 1)
    assert store.acquire_lease("other", 60, now) and store.acquire_lease(
        "thing", 60, now + 120
    )  # expired lease
    with pytest.raises(DomainError) as err:
        store.consume(c.nonce, "did:b", now)
    assert err.value.code == "nonce_did_mismatch"
