"""Identity for users, agents and devices: SIWE and DID login, JWT access tokens, API keys.

The public entry point is ``authorize(token, route_auth)`` (see ``ig3.identity.authorizer``):
every front end calls it. Imports here are lazy so that importing ``ig3.identity`` costs
nothing; the login modules (eth-account, web3) load only on the login paths.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ig3.api.http import Principal


def authorize(token: str | None, route_auth: str) -> Principal | None:
    """The caller's Principal for a route of kind ``route_auth`` (none/user/device/any).

    ``token``: the bearer credential (a JWT or an ``ig3_sk_`` API key), or the whole
    ``Authorization`` header value. Raises ``ig3.errors.Unauthorized`` (401: missing, invalid,
    expired, revoked) or ``ig3.errors.Forbidden`` (403: wrong kind of credential for the route).
    Returns None for ``none`` routes.
    """
    global _authorizer
    a = _authorizer
    if a is None:  # first call in this process: build from the environment (ig3.identity.service)
        from ig3.identity.service import authorizer

        a = _authorizer = authorizer()
    return a.authorize(token, route_auth)


_authorizer = None


__all__ = ["authorize"]
