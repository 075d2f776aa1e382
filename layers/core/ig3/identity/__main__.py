"""Operator commands: ``python -m ig3.identity rotate-jwt-key`` | ``init-jwt-key`` [--secret-id ID].

Rotation puts a fresh ES256 key as ``current`` and keeps the two previous ones for verification,
so tokens issued before the rotation stay valid until they expire (at most ``IG3_JWT_TTL_S``).
Containers pick the new key up within the key cache TTL (5 min), or at once on an unknown ``kid``.
"""
from __future__ import annotations

import argparse

from ig3.identity.settings import load_settings
from ig3.identity.tokens import ensure_signing_secret, rotate_secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ig3.identity")
    parser.add_argument("command", choices=["rotate-jwt-key", "init-jwt-key"])
    parser.add_argument("--secret-id", default=None, help="default: $IG3_JWT_SECRET_ID")
    args = parser.parse_args(argv)
    secret_id = args.secret_id or load_settings().jwt_secret_id
    if args.command == "init-jwt-key":
        print("created" if ensure_signing_secret(secret_id) else "exists", secret_id)
    else:
        print("new kid", rotate_secret(secret_id))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
