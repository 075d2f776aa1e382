"""authorizer function: API Gateway REQUEST authorizer for ``Authorization: Bearer <jwt | api key>``.

The policy depends on the credential only, never on the route being called: it allows every
route in the topology whose ``auth`` kind admits this principal's kind (user routes for wallet,
DID and API-key principals; device routes for devices). So API Gateway may cache the result by
the Authorization header (identity source) without one route's answer leaking to another; a
device token calling a user route gets API Gateway's 403 from the policy. Missing or invalid
credentials raise ``Exception("Unauthorized")``, which API Gateway turns into its 401.

Caching bounds how late an expiry or a revoked API key is noticed at the edge: keep the
authorizer's result TTL short (≤ 60 s) next to the 15-minute token lifetime.
"""
from __future__ import annotations

import re
from typing import Any

from ig3.errors import Unauthorized
from ig3.identity.authorizer import allowed_for, bearer_token
from ig3.observability import logger
from ig3.topology import TOPOLOGY

_PARAM = re.compile(r"\{[^}]+\}")


def _header(event: dict[str, Any], name: str) -> str | None:
    for k, v in (event.get("headers") or {}).items():
        if k.lower() == name:
            return v
    for k, values in (event.get("multiValueHeaders") or {}).items():
        if k.lower() == name and values:
            return values[0]
    return None


def _api_base(method_arn: str) -> str:
    # arn:aws:execute-api:{region}:{account}:{api id}/{stage}/{METHOD}/{path...}
    arn_prefix, _, rest = method_arn.partition(":execute-api:")
    parts = rest.split("/")
    return f"{arn_prefix}:execute-api:{parts[0]}/{parts[1]}"


def allowed_resources(method_arn: str, kind: str) -> list[str]:
    base = _api_base(method_arn)
    return [f"{base}/{r.method}{_PARAM.sub('*', r.path)}" for r in TOPOLOGY.routes
            if r.auth != "none" and allowed_for(kind, r.auth)]


def _context(p) -> dict[str, Any]:
    # API Gateway context values must be strings, numbers or booleans: absent values are omitted.
    ctx: dict[str, Any] = {"principal": p.subject, "principal_type": p.kind, "scopes": " ".join(sorted(p.scopes)),
                           "tier": p.tier}
    for name in ("key_id", "rpm_limit", "tpm_limit", "budget"):
        value = getattr(p, name)
        if value is not None:
            ctx[name] = value if isinstance(value, str) else str(value)
    return ctx


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    from ig3.identity.service import authorizer

    token = bearer_token(_header(event, "authorization"))
    if not token:
        raise Exception("Unauthorized")  # noqa: TRY002 - the exact string API Gateway maps to 401
    try:
        principal = authorizer().principal(token)
    except Unauthorized as exc:
        logger.info("credential rejected", extra={"code": exc.code})
        raise Exception("Unauthorized") from None  # noqa: TRY002
    resources = allowed_resources(event["methodArn"], principal.kind)
    return {
        "principalId": principal.subject,
        "policyDocument": {"Version": "2012-10-17", "Statement": [
            {"Action": "execute-api:Invoke", "Effect": "Allow" if resources else "Deny",
             "Resource": resources or [event["methodArn"]]}]},
        "context": _context(principal),
    }
