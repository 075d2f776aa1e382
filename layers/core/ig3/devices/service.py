"""Device registration: challenge -> signed response -> IoT credentials; re-registration; removal.

Order of ``register`` and why:

1. Everything that only *reads* comes first — DID syntax, chain id, payload limits, the nonce
   (peeked: known, unexpired, for this DID and chain), the DID document (resolved, unexpired,
   its ``id`` the DID), the signature over ``registration_message`` with the domain / chain /
   expiry bound to the nonce. Bad input is refused here with a 4xx and nothing written.
2. The nonce is consumed with one conditional delete. Concurrent uses of one nonce: one wins.
3. A lease on the device (its thing name, derived from the DID) serialises concurrent
   registrations of the same DID with different nonces: the loser gets 409, so one DID never
   becomes two devices or two half-provisioned ones.
4. IoT provisioning (thing, group, certificate, policy) — undone step by step if it fails.
5. The record is written conditionally on the version read in step 3 (the commit point), then
   ``DeviceRegistered`` is published. If either fails, the record is restored (or deleted) and
   the new certificate (and a thing/policy this attempt created) removed: no half-registered
   device. The nonce stays consumed; the client asks for a new one.
6. Only after the commit is the previous certificate revoked (re-registration = rotation).
   Should that fail, its id stays in ``pending_revocations`` and the next registration or the
   deregistration revokes it.

Device ids (= IoT thing names) are ``ig3-`` + 32 hex of sha256(canonical DID): deterministic,
valid as a thing name and an MQTT topic level, and uniform across EVM and SS58 DIDs.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Callable

from ig3.devices.challenges import ChallengeStore
from ig3.devices.model import (
    MAX_CAPABILITIES_BYTES,
    MAX_CAPABILITY_KEYS,
    MAX_MODELS,
    MAX_MODELS_BYTES,
    ChallengeRequest,
    ChallengeResponse,
    DeviceRecord,
    RegisterRequest,
    RegisterResponse,
    payload_sizes,
)
from ig3.devices.provisioning import IotProvisioner, Provisioned, ProvisioningFailed
from ig3.devices.store import DeviceStore
from ig3.did.ids import parse_did, same_did
from ig3.did.messages import registration_message
from ig3.did.resolvers import DidResolver
from ig3.did.verify import DidDocumentExpired, authentication_methods, parse_signature, verify_did_signature
from ig3.errors import BadRequest, DomainError, Forbidden, NotFound, PayloadTooLarge, Unavailable
from ig3.events import DomainEvent, EventPublisher
from ig3.observability import logger
from ig3.wire import device_heartbeat_topic, device_results_topic, device_tasks_topic

CHALLENGE_TTL_S = 300.0
LEASE_S = 60.0


def device_id_for(did: str) -> str:
    return "ig3-" + hashlib.sha256(parse_did(did).did.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Caller:
    """Who asks to deregister: the authorizer's principal (subject, kind, scopes)."""

    subject: str
    kind: str
    scopes: frozenset[str] = frozenset()


class RegistrationService:
    def __init__(
        self,
        *,
        resolver: DidResolver,
        challenges: ChallengeStore,
        devices: DeviceStore,
        iot: IotProvisioner,
        events: EventPublisher,
        chain_id: int,
        remove_live_state: Callable[[str], None] = lambda thing: None,
        clock: Callable[[], float] = time.time,
        challenge_ttl_s: float = CHALLENGE_TTL_S,
    ):
        self.resolver, self.challenges, self.devices = resolver, challenges, devices
        self.iot, self.events, self.chain_id = iot, events, int(chain_id)
        self.remove_live_state, self.clock = remove_live_state, clock
        self.challenge_ttl_s = min(challenge_ttl_s, CHALLENGE_TTL_S)

    # -- step 1 of 2 -------------------------------------------------------------------------------
    def challenge(self, req: ChallengeRequest, *, domain: str) -> ChallengeResponse:
        did = parse_did(req.did)
        self._check_chain(req.chain_id)
        # Resolve first: no nonce is stored for a DID that could never register (and the
        # resolver's cache makes the register step's lookup free).
        doc = self.resolver.resolve(did.did)
        if doc.is_expired(self.clock()):
            raise DidDocumentExpired("the DID document has expired")
        if not authentication_methods(doc):
            raise Forbidden(
                "the DID document has no authentication method a device could sign with",
                code="no_authentication_method",
            )
        c = self.challenges.issue(
            did=did.did, chain_id=self.chain_id, domain=domain, ttl_s=self.challenge_ttl_s, now=self.clock()
        )
        return ChallengeResponse(
            nonce=c.nonce, expires_at=c.expires_at, domain=c.domain, chain_id=c.chain_id, did=c.did
        )

    # -- step 2 of 2 -------------------------------------------------------------------------------
    def register(self, req: RegisterRequest) -> RegisterResponse:
        now = self.clock()
        did = parse_did(req.did)
        self._check_chain(req.chain_id)
        try:
            parse_signature(req.signature)
        except ValueError as exc:
            raise BadRequest(f"malformed signature: {exc}", code="invalid_signature") from None
        self._check_limits(req)

        challenge = self.challenges.peek(req.nonce)
        if challenge is None:
            raise BadRequest(
                "the nonce is unknown or was already used; request a new challenge", code="nonce_used"
            )
        if challenge.did != did.did:
            raise BadRequest("the nonce was issued for another DID", code="nonce_did_mismatch")
        if challenge.expires_at <= now:
            raise BadRequest("the nonce has expired; request a new challenge", code="nonce_expired")
        if challenge.chain_id != self.chain_id:
            raise BadRequest("the nonce was issued for another chain", code="chain_id_mismatch")

        doc = self.resolver.resolve(did.did)
        message = registration_message(
            domain=challenge.domain,
            did=did.did,
            nonce=challenge.nonce,
            chain_id=challenge.chain_id,
            expires_at=challenge.expires_at,
        )
        method = verify_did_signature(doc, message, req.signature, chain_id=self.chain_id, now=now)

        self.challenges.consume(req.nonce, did.did, self.clock())

        device_id = device_id_for(did.did)
        lease = self.challenges.acquire_lease(device_id, LEASE_S, self.clock())
        try:
            return self._provision_and_commit(req, did.did, device_id, method, doc.controller)
        finally:
            self.challenges.release_lease(device_id, lease)

    def _provision_and_commit(
        self, req: RegisterRequest, did: str, device_id: str, method: str, controller: str
    ) -> RegisterResponse:
        previous = self.devices.get(device_id)
        provisioned = self.iot.provision(device_id, attributes=_thing_attributes(did, req))
        now = self.clock()
        record = DeviceRecord(
            device_id=device_id,
            thing_name=device_id,
            did=did,
            owner=req.owner,
            owner_verified=bool(controller) and same_did(controller, f"did:peaq:{req.owner}"),
            status="registered",
            region=req.region,
            location=req.location,
            capabilities=req.capabilities,
            models=req.models,
            chain_id=self.chain_id,
            verification_method=method,
            cert_id=provisioned.credentials.certificate_id,
            cert_arn=provisioned.credentials.certificate_arn,
            policy_name=provisioned.policy_name,
            thing_group=provisioned.thing_group,
            pending_revocations=list(previous.pending_revocations) if previous else [],
            registered_at=previous.registered_at if previous else now,
            updated_at=now,
            registrations=(previous.registrations + 1) if previous else 1,
            version=(previous.version + 1) if previous else 1,
        )
        old_certs = [
            c
            for c in ([previous.cert_id] if previous and previous.cert_id else [])
            + (previous.pending_revocations if previous else [])
            if c != record.cert_id
        ]
        rotated = previous is not None and previous.status == "registered"
        written = False
        try:
            self.devices.write(record, previous.version if previous else None)
            written = True
            self.events.publish(
                [
                    DomainEvent(
                        "DeviceRegistered",
                        {
                            "device_id": device_id,
                            "did": did,
                            "owner": req.owner,
                            "region": req.region,
                            "chain_id": self.chain_id,
                            "cert_id": record.cert_id,
                            "rotated": rotated,
                            "models": [m.name for m in req.models],
                        },
                        event_id=f"DeviceRegistered:{device_id}:{record.cert_id}",
                        time=now,
                    )
                ]
            )
        except Exception as exc:
            self._compensate(provisioned, record, previous, written)
            if isinstance(exc, DomainError):
                raise
            logger.error(
                "registration rolled back", extra={"device_id": device_id, "error_type": type(exc).__name__}
            )
            raise Unavailable(
                "registration could not be completed and was rolled back; request a new challenge",
                code="registration_failed",
            ) from exc
        record = self._revoke_old(record, old_certs)
        logger.info("device registered", extra={"device_id": device_id, "rotated": rotated})
        return RegisterResponse(
            device_id=device_id,
            thing_name=device_id,
            did=did,
            status=record.status,
            rotated=rotated,
            verification_method=method,
            iot_endpoint=self.iot.endpoint(),
            topics={
                "tasks": device_tasks_topic(device_id),
                "results": device_results_topic(device_id),
                "heartbeat": device_heartbeat_topic(device_id),
                "stream": "ig3/v1/tasks/{task}/stream",
            },
            credentials=provisioned.credentials,
            device=record.public_view(),
        )

    def _compensate(
        self, provisioned: Provisioned, record: DeviceRecord, previous: DeviceRecord | None, written: bool
    ) -> None:
        if written:
            try:
                if previous is None:
                    self.devices.delete(record.device_id, record.version)
                else:
                    restored = previous.model_copy(
                        update={"version": record.version + 1, "updated_at": self.clock()}
                    )
                    self.devices.write(restored, record.version)
            except Exception as exc:  # noqa: BLE001
                logger.error(
                    "device record rollback failed",
                    extra={"device_id": record.device_id, "error_type": type(exc).__name__},
                )
        self.iot.rollback(provisioned)

    def _revoke_old(self, record: DeviceRecord, old_certs: list[str]) -> DeviceRecord:
        if not old_certs:
            return record
        failed = []
        for cert_id in old_certs:
            try:
                self.iot.revoke(record.thing_name, cert_id, record.policy_name)
            except Exception as exc:  # noqa: BLE001 — committed already: remember and retry later
                logger.error(
                    "certificate revocation failed",
                    extra={"device_id": record.device_id, "error_type": type(exc).__name__},
                )
                failed.append(cert_id)
        if failed == record.pending_revocations:
            return record
        updated = record.model_copy(update={"pending_revocations": failed, "version": record.version + 1})
        try:
            self.devices.write(updated, record.version)
            return updated
        except Exception as exc:  # noqa: BLE001
            logger.error(
                "pending revocations not saved",
                extra={"device_id": record.device_id, "error_type": type(exc).__name__},
            )
            return record

    # -- removal -----------------------------------------------------------------------------------
    def deregister(self, device_id: str, caller: Caller) -> DeviceRecord:
        record = self.devices.get(device_id)
        if record is None:
            raise NotFound(f"no device {device_id}", code="device_not_found")
        if not _may_manage(record, caller):
            raise Forbidden(
                "only the device's owner, its DID or the device itself may deregister it",
                code="not_device_owner",
            )
        if record.status == "deregistered":
            self.remove_live_state(device_id)  # idempotent: finish a removal a crash interrupted
            return record
        lease = self.challenges.acquire_lease(device_id, LEASE_S, self.clock())
        try:
            certs = ([record.cert_id] if record.cert_id else []) + record.pending_revocations
            try:
                self.iot.deprovision(device_id, certs, record.policy_name)
            except Exception as exc:
                # Every step is idempotent: the record still says "registered", so a retry finishes it.
                logger.error(
                    "iot deprovisioning failed",
                    extra={"device_id": device_id, "error_type": type(exc).__name__},
                )
                raise ProvisioningFailed("deregistration could not finish; retry") from exc
            try:
                self.remove_live_state(device_id)
            except Exception as exc:  # noqa: BLE001 — the cert is revoked: the device cannot connect anyway
                logger.warning(
                    "live state removal failed",
                    extra={"device_id": device_id, "error_type": type(exc).__name__},
                )
            now = self.clock()
            updated = record.model_copy(
                update={
                    "status": "deregistered",
                    "cert_id": None,
                    "cert_arn": None,
                    "policy_name": None,
                    "pending_revocations": [],
                    "deregistered_at": now,
                    "updated_at": now,
                    "version": record.version + 1,
                }
            )
            self.devices.write(updated, record.version)
            self.events.publish(
                [
                    DomainEvent(
                        "DeviceDeregistered",
                        {
                            "device_id": device_id,
                            "did": record.did,
                            "owner": record.owner,
                            "by": caller.subject,
                        },
                        event_id=f"DeviceDeregistered:{device_id}:{updated.version}",
                        time=now,
                    )
                ]
            )
            logger.info("device deregistered", extra={"device_id": device_id})
            return updated
        finally:
            self.challenges.release_lease(device_id, lease)

    # -- checks ------------------------------------------------------------------------------------
    def _check_chain(self, chain_id: int | None) -> None:
        if chain_id is not None and chain_id != self.chain_id:
            raise BadRequest(
                f"this gateway verifies DIDs on chain {self.chain_id}, not {chain_id}",
                code="chain_id_mismatch",
            )

    @staticmethod
    def _check_limits(req: RegisterRequest) -> None:
        cap_bytes, cap_keys, model_bytes = payload_sizes(req)
        if cap_bytes > MAX_CAPABILITIES_BYTES or cap_keys > MAX_CAPABILITY_KEYS:
            raise PayloadTooLarge(
                f"capabilities exceed {MAX_CAPABILITY_KEYS} entries / {MAX_CAPABILITIES_BYTES} bytes",
                code="capabilities_too_large",
            )
        if len(req.models) > MAX_MODELS or model_bytes > MAX_MODELS_BYTES:
            raise PayloadTooLarge(
                f"models exceed {MAX_MODELS} entries / {MAX_MODELS_BYTES} bytes", code="models_too_large"
            )


def _thing_attributes(did: str, req: RegisterRequest) -> dict[str, str]:
    attrs = {"did": did, "owner": req.owner}
    if req.region:
        attrs["region"] = req.region
    return attrs


def _may_manage(record: DeviceRecord, caller: Caller) -> bool:
    if "*" in caller.scopes or "devices:admin" in caller.scopes:
        return True
    if caller.kind == "device":
        return caller.subject == record.device_id
    if caller.kind == "did":
        return same_did(caller.subject, record.did)
    return caller.subject.lower() == record.owner.lower()  # wallet / API key acting for its wallet
