"""Device registration routes (issue #4): challenge, register, deregister.

``POST /v1/devices/challenge`` and ``POST /v1/devices/register`` are unauthenticated: the
signature over the challenge *is* the authentication. ``DELETE /v1/devices/{id}`` needs a
principal (the owner's wallet, the device's DID, or the device itself). The service and its
boto3 clients are built on first use (``ig3.devices.wiring``), so importing this module is cheap.
"""

from __future__ import annotations

from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from ig3.api.http import current_principal, json_response, parse_body
from ig3.devices.model import ChallengeRequest, RegisterRequest

router = APIGatewayRouter()


def _service():
    from ig3.devices.wiring import registration_service

    return registration_service()


@router.post("/v1/devices/challenge")
def device_challenge():
    from ig3.devices.wiring import public_host

    body = parse_body(router, ChallengeRequest)
    return json_response(200, _service().challenge(body, domain=public_host()))


@router.post("/v1/devices/register")
def device_register():
    body = parse_body(router, RegisterRequest)
    result = _service().register(body)
    # The private key is in this body once; never cache it anywhere on the way.
    return json_response(201 if not result.rotated else 200, result, headers={"Cache-Control": "no-store"})


@router.delete("/v1/devices/<device_id>")
def device_deregister(device_id: str):
    from ig3.devices.service import Caller

    principal = current_principal(router)
    record = _service().deregister(
        device_id, Caller(subject=principal.subject, kind=principal.kind, scopes=principal.scopes)
    )
    return json_response(200, record.public_view())
