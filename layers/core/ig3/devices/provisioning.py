"""IoT provisioning — port (``IotProvisioner``) and the boto3 ``iot`` adapter.

A device gets: an IoT thing (name derived from its DID) in the fleet's thing group, a fresh
key pair + certificate (created by IoT Core; the private key goes to the device once and is
stored nowhere), and an IoT policy on that certificate confining it to its own topics::

    iot:Connect    client/<thing>                       (and only while the cert is attached to the thing)
    iot:Publish    topic/ig3/v1/devices/<thing>/*        (results, heartbeat)
                   topic/ig3/v1/tasks/*/stream           (stream chunks to subscribers)
    iot:Subscribe  topicfilter/ig3/v1/devices/<thing>/*  (its task topic)
    iot:Receive    topic/ig3/v1/devices/<thing>/*

Two ways to hold that rule:

- **Shared template policy** (AWS; ``IG3_IOT_DEVICE_POLICY`` names it). The deployment creates one
  policy written with ``${iot:Connection.Thing.ThingName}`` (plus what the Greengrass v2 nucleus
  needs) and grants this function attach/detach on it only. Registration attaches it to each
  certificate; thing-scoped variables make it per device without spending the IoT policy quota.
- **Per-device policy** (no shared policy configured — the local cloud): this module writes the
  rule above with the thing name spelled out, as ``IG3_IOT_POLICY_PREFIX`` + thing.

The thing group (``IG3_IOT_THING_GROUP``) is created only when found missing (the deployment owns
it in AWS). ``provision`` records an undo step for everything it creates, so a failure part-way
(or a later failure the caller reports through ``rollback``) removes exactly what this attempt
made: its certificate always; the thing and a per-device policy only if this attempt created
them (a re-registration's thing and policy belong to the live device). Only calls the
deployment's IAM grants are used on the AWS path (no List* over certificates or policies).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from ig3.devices.model import Credentials
from ig3.errors import Unavailable
from ig3.observability import logger
from ig3.topology import IOT_DEVICE_POLICY_ENV, IOT_THING_GROUP_ENV

DEFAULT_THING_GROUP = "ig3-devices"
DEFAULT_POLICY_PREFIX = "ig3-device-"
POLICY_PREFIX_ENV = "IG3_IOT_POLICY_PREFIX"
ENDPOINT_ENV = "IG3_IOT_ENDPOINT"


class ProvisioningFailed(Unavailable):
    code = "provisioning_failed"


@dataclass
class Provisioned:
    thing_name: str
    thing_created: bool
    policy_name: str
    policy_created: bool
    thing_group: str
    credentials: Credentials
    undo: list[tuple[str, Callable[[], Any]]] = field(default_factory=list, repr=False)


class IotProvisioner(Protocol):
    def provision(self, thing: str, *, attributes: dict[str, str]) -> Provisioned: ...
    def rollback(self, provisioned: Provisioned) -> None: ...
    def revoke(self, thing: str, cert_id: str, policy_name: str | None) -> None: ...
    def deprovision(self, thing: str, cert_ids: list[str], policy_name: str | None) -> None: ...
    def endpoint(self) -> str | None: ...


def device_policy(thing: str, region: str, account: str) -> dict[str, Any]:
    arn = f"arn:aws:iot:{region}:{account}"
    own = f"ig3/v1/devices/{thing}/*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": f"{arn}:client/{thing}",
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            },
            {
                "Effect": "Allow",
                "Action": "iot:Publish",
                "Resource": [f"{arn}:topic/{own}", f"{arn}:topic/ig3/v1/tasks/*/stream"],
            },
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": [f"{arn}:topicfilter/{own}"]},
            {"Effect": "Allow", "Action": "iot:Receive", "Resource": [f"{arn}:topic/{own}"]},
        ],
    }


def _arn_parts(arn: str) -> tuple[str, str]:
    parts = arn.split(":")  # arn:aws:iot:<region>:<account>:cert/<id>
    return parts[3], parts[4]


def _code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def _tolerate(*codes: str) -> Callable[[Callable[[], Any]], None]:
    def run(step: Callable[[], Any]) -> None:
        try:
            step()
        except Exception as exc:  # noqa: BLE001
            if _code(exc) not in codes:
                raise

    return run


_gone_ok = _tolerate("ResourceNotFoundException", "InvalidRequestException")


class BotoIotProvisioner:
    def __init__(
        self,
        client: Any | None = None,
        *,
        thing_group: str | None = None,
        shared_policy: str | None = None,
        policy_prefix: str | None = None,
        endpoint: str | None = None,
    ):
        self._client = client
        self.thing_group = thing_group or os.environ.get(IOT_THING_GROUP_ENV) or DEFAULT_THING_GROUP
        self.shared_policy = shared_policy or os.environ.get(IOT_DEVICE_POLICY_ENV) or None
        self.policy_prefix = policy_prefix or os.environ.get(POLICY_PREFIX_ENV) or DEFAULT_POLICY_PREFIX
        self._endpoint = endpoint or os.environ.get(ENDPOINT_ENV)

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("iot")
        return self._client

    def policy_name(self, thing: str) -> str:
        return self.shared_policy or self.policy_prefix + thing

    def endpoint(self) -> str | None:
        if self._endpoint is None:
            try:
                self._endpoint = self.client.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
            except Exception as exc:  # noqa: BLE001 — the endpoint is a convenience for the device
                logger.warning("iot endpoint lookup failed", extra={"error_type": type(exc).__name__})
                return None
        return self._endpoint

    # -- provisioning --------------------------------------------------------------------------
    def provision(self, thing: str, *, attributes: dict[str, str]) -> Provisioned:
        c = self.client
        undo: list[tuple[str, Callable[[], Any]]] = []
        try:
            thing_created = False
            try:
                c.describe_thing(thingName=thing)
                c.update_thing(thingName=thing, attributePayload={"attributes": attributes, "merge": True})
            except Exception as exc:  # noqa: BLE001
                if _code(exc) != "ResourceNotFoundException":
                    raise
                c.create_thing(thingName=thing, attributePayload={"attributes": attributes})
                thing_created = True
                undo.append(("delete_thing", lambda: self._delete_thing(thing)))
            self._add_to_group(thing)

            cert = c.create_keys_and_certificate(setAsActive=True)
            cert_id, cert_arn = cert["certificateId"], cert["certificateArn"]
            undo.append(("delete_certificate", lambda: self._delete_certificate(cert_id)))

            policy, policy_created = self.policy_name(thing), False
            if not self.shared_policy:
                region, account = _arn_parts(cert_arn)
                policy_created = self._ensure_policy(policy, device_policy(thing, region, account))
                if policy_created:
                    undo.append(("delete_policy", lambda: self._delete_policy(policy)))
            c.attach_policy(policyName=policy, target=cert_arn)
            undo.append(("detach_policy", lambda: c.detach_policy(policyName=policy, target=cert_arn)))
            c.attach_thing_principal(thingName=thing, principal=cert_arn)
            undo.append(
                (
                    "detach_thing_principal",
                    lambda: c.detach_thing_principal(thingName=thing, principal=cert_arn),
                )
            )
        except Exception as exc:
            self._run_undo(undo)
            logger.error(
                "iot provisioning failed",
                extra={"thing": thing, "error_type": type(exc).__name__, "error_code": _code(exc)},
            )
            raise ProvisioningFailed(
                "device provisioning failed; nothing was kept — request a new challenge " "and register again"
            ) from exc
        creds = Credentials(
            certificate_id=cert_id,
            certificate_arn=cert_arn,
            certificate_pem=cert["certificatePem"],
            private_key=cert["keyPair"]["PrivateKey"],
            public_key=cert["keyPair"]["PublicKey"],
        )
        return Provisioned(thing, thing_created, policy, policy_created, self.thing_group, creds, undo)

    def rollback(self, provisioned: Provisioned) -> None:
        self._run_undo(provisioned.undo)
        provisioned.undo = []

    @staticmethod
    def _run_undo(undo: list[tuple[str, Callable[[], Any]]]) -> None:
        for name, step in reversed(undo):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 — keep undoing the rest; log what stayed behind
                logger.error(
                    "iot rollback step failed", extra={"step": name, "error_type": type(exc).__name__}
                )

    def _add_to_group(self, thing: str) -> None:
        try:
            self.client.add_thing_to_thing_group(thingGroupName=self.thing_group, thingName=thing)
            return
        except Exception as exc:  # noqa: BLE001
            if _code(exc) != "ResourceNotFoundException":
                raise
        # The group is missing (a fresh local cloud): create it, then add.
        _tolerate("ResourceAlreadyExistsException")(
            lambda: self.client.create_thing_group(
                thingGroupName=self.thing_group,
                thingGroupProperties={"thingGroupDescription": "iG3 edge devices"},
            )
        )
        self.client.add_thing_to_thing_group(thingGroupName=self.thing_group, thingName=thing)

    def _ensure_policy(self, name: str, document: dict[str, Any]) -> bool:
        """Create the per-device policy, or make ``document`` its default version. True if created now."""
        c = self.client
        text = json.dumps(document, separators=(",", ":"), sort_keys=True)
        try:
            current = c.get_policy(policyName=name)
        except Exception as exc:  # noqa: BLE001
            if _code(exc) != "ResourceNotFoundException":
                raise
            c.create_policy(policyName=name, policyDocument=text)
            return True
        if json.loads(current["policyDocument"]) != document:
            versions = c.list_policy_versions(policyName=name)["policyVersions"]
            older = sorted(
                (v for v in versions if not v["isDefaultVersion"]), key=lambda v: int(v["versionId"])
            )
            for v in older[:-3]:  # IoT keeps at most 5 versions
                c.delete_policy_version(policyName=name, policyVersionId=v["versionId"])
            c.create_policy_version(policyName=name, policyDocument=text, setAsDefault=True)
        return False

    # -- teardown ------------------------------------------------------------------------------
    def _delete_certificate(self, cert_id: str) -> None:
        # Runs after the undo steps that detached it from the thing and the policy (later in the list).
        self.client.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
        self.client.delete_certificate(certificateId=cert_id)

    def _delete_policy(self, name: str) -> None:
        if name == self.shared_policy:
            return  # the deployment's template policy is never ours to delete
        c = self.client
        try:
            if c.list_targets_for_policy(policyName=name).get("targets"):
                return  # still attached to another certificate of this device
            for v in c.list_policy_versions(policyName=name).get("policyVersions", []):
                if not v["isDefaultVersion"]:
                    c.delete_policy_version(policyName=name, policyVersionId=v["versionId"])
            c.delete_policy(policyName=name)
        except Exception as exc:  # noqa: BLE001
            if _code(exc) != "ResourceNotFoundException":
                raise

    def _delete_thing(self, thing: str) -> None:
        c = self.client
        try:
            for principal in c.list_thing_principals(thingName=thing).get("principals", []):
                c.detach_thing_principal(thingName=thing, principal=principal)
            _gone_ok(
                lambda: c.remove_thing_from_thing_group(thingGroupName=self.thing_group, thingName=thing)
            )
            c.delete_thing(thingName=thing)
        except Exception as exc:  # noqa: BLE001
            if _code(exc) != "ResourceNotFoundException":
                raise

    def revoke(self, thing: str, cert_id: str, policy_name: str | None) -> None:
        """Take a certificate off the device for good: detached from thing and policy, REVOKED."""
        c = self.client
        try:
            cert_arn = c.describe_certificate(certificateId=cert_id)["certificateDescription"][
                "certificateArn"
            ]
        except Exception as exc:  # noqa: BLE001
            if _code(exc) == "ResourceNotFoundException":
                return
            raise
        _gone_ok(lambda: c.detach_thing_principal(thingName=thing, principal=cert_arn))
        if policy_name:
            _gone_ok(lambda: c.detach_policy(policyName=policy_name, target=cert_arn))
        c.update_certificate(certificateId=cert_id, newStatus="REVOKED")

    def deprovision(self, thing: str, cert_ids: list[str], policy_name: str | None) -> None:
        for cert_id in dict.fromkeys(cert_ids):
            self.revoke(thing, cert_id, policy_name)
        if policy_name:
            self._delete_policy(policy_name)
        self._delete_thing(thing)
