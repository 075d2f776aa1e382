"""``authorize(token, route_auth) -> Principal``: the one decision every front end shares.

Callers: the API Gateway Lambda authorizer (``functions/authorizer``), the local cloud's
HTTP front and the LLM API (per request). It must stay fast — no web3, no eth-account, no
AWS call on a warm path: JWTs verify against cached public keys (and verified tokens are
cached by their exact text), API keys resolve through an in-process cache, then Redis.

Route kinds (``ig3.topology.ApiRoute.auth``):
- ``none``: no credentials needed; returns None (a presented token is not even looked at).
- ``user``: wallet / DID access tokens and API keys; device credentials get 403.
- ``device``: only device access tokens; user credentials get 403.
- ``any``: any valid credential.
Missing or invalid credentials raise ``Unauthorized`` (401) with a ``WWW-Authenticate``
header; a valid credential of the wrong kind raises ``Forbidden`` (403).
"""
from __future__ import annotations

from ig3.api.http import Principal
from ig3.errors import Forbidden, Unauthorized
from ig3.identity.apikeys import KEY_PREFIX, ApiKeyService
from ig3.identity.tokens import TokenService

ROUTE_AUTH_KINDS = ("none", "user", "device", "any")
USER_KINDS = frozenset({"wallet", "did", "apikey"})
DEVICE_KINDS = frozenset({"device"})
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="ig3"'}


def bearer_token(header_value: str | None) -> str | None:
    """The credential from an ``Authorization`` header value (``Bearer`` is case-insensitive)."""
    if not header_value:
        return None
    value = header_value.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        return rest.strip() or None
    return value or None  # a bare token; another scheme ("Basic ...") then fails as an unknown credential


class Authorizer:
    def __init__(self, tokens: TokenService, api_keys: ApiKeyService):
        self.tokens = tokens
        self.api_keys = api_keys

    def principal(self, token: str) -> Principal:
        """The principal a credential stands for, whatever the route (401 if invalid)."""
        if token.startswith(KEY_PREFIX):
            try:
                r = self.api_keys.resolve(token)
            except Unauthorized as exc:
                exc.headers = {**_CHALLENGE, **exc.headers}
                raise
            return Principal(subject=r.owner, kind="apikey", scopes=frozenset(r.scopes), tier=r.tier,
                             key_id=r.key_id, rpm_limit=r.rpm_limit, tpm_limit=r.tpm_limit, budget=r.budget)
        if token.count(".") == 2:
            try:
                c = self.tokens.verify(token)
            except Unauthorized as exc:
                exc.headers = {**_CHALLENGE, **exc.headers}
                raise
            return Principal(subject=c.subject, kind=c.principal_type, scopes=frozenset(c.scopes), tier=c.tier)
        raise Unauthorized("credential is neither an access token nor an ig3 API key", code="invalid_token",
                           headers=dict(_CHALLENGE))

    def authorize(self, token: str | None, route_auth: str) -> Principal | None:
        if route_auth == "none":
            return None
        if route_auth not in ROUTE_AUTH_KINDS:
            raise ValueError(f"unknown route auth kind {route_auth!r}")
        token = bearer_token(token)
        if not token:
            raise Unauthorized("missing credentials: send 'Authorization: Bearer <access token or API key>'",
                               code="missing_credentials", headers=dict(_CHALLENGE))
        p = self.principal(token)
        if route_auth == "user" and p.kind not in USER_KINDS:
            raise Forbidden("this route accepts only user credentials (wallet / DID token or API key)",
                            code="user_credentials_required")
        if route_auth == "device" and p.kind not in DEVICE_KINDS:
            raise Forbidden("this route accepts only device credentials", code="device_credentials_required")
        return p


def allowed_for(kind: str, route_auth: str) -> bool:
    """Whether a principal of this kind may call routes of this auth kind (policy building)."""
    if route_auth in ("none", "any"):
        return True
    if route_auth == "user":
        return kind in USER_KINDS
    if route_auth == "device":
        return kind in DEVICE_KINDS
    return False
