"""Where the bot's settings come from.

The bot token and the webhook secret are one Secrets Manager secret (JSON
``{"bot_token", "webhook_secret"}``, id in ``IG3_TELEGRAM_SECRET_ID``), read once per container.
A local cloud has the secret's name but no value: when ``IG3_TELEGRAM_BOT_TOKEN`` and
``IG3_TELEGRAM_WEBHOOK_SECRET`` are set, the first read writes them into an empty secret
(first-use bootstrap, like the JWT keys); in AWS an operator puts the value (see the README).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ig3.errors import Unavailable

SECRET_ENV = "IG3_TELEGRAM_SECRET_ID"
QUEUE_ENV = "IG3_QUEUE_TELEGRAM_URL"


@dataclass(frozen=True)
class BotSettings:
    bot_token: str
    webhook_secret: str
    api_base_url: str  # Bot API root, "https://api.telegram.org" (a stand-in in tests)
    gateway_url: str  # the LLM gateway the worker streams from
    public_url: str  # where /link codes are redeemed
    default_model: str
    edit_interval_s: float
    memory_messages: int
    max_tokens: int


def _read_secret(secret_id: str) -> dict[str, str]:
    from ig3.aws import client

    sm = client("secretsmanager")
    try:
        raw = sm.get_secret_value(SecretId=secret_id).get("SecretString") or ""
    except sm.exceptions.ResourceNotFoundException:
        raw = ""
    if not raw:
        token, hook = os.environ.get("IG3_TELEGRAM_BOT_TOKEN"), os.environ.get("IG3_TELEGRAM_WEBHOOK_SECRET")
        if not (token and hook):
            raise Unavailable("the Telegram bot is not configured (its secret has no value)", code="bot_not_configured")
        raw = json.dumps({"bot_token": token, "webhook_secret": hook})
        try:
            sm.create_secret(Name=secret_id, SecretString=raw)
        except sm.exceptions.ResourceExistsException:
            sm.put_secret_value(SecretId=secret_id, SecretString=raw)
    doc = json.loads(raw)
    if not doc.get("bot_token") or not doc.get("webhook_secret"):
        raise Unavailable("the Telegram bot secret lacks bot_token or webhook_secret", code="bot_not_configured")
    return doc


def load_settings() -> BotSettings:
    env = os.environ.get
    secret = _read_secret(env(SECRET_ENV, "ig3-telegram-bot"))
    public = env("IG3_PUBLIC_URL", "http://127.0.0.1:8080").rstrip("/")
    return BotSettings(
        bot_token=secret["bot_token"], webhook_secret=secret["webhook_secret"],
        api_base_url=env("IG3_TELEGRAM_API_URL", "https://api.telegram.org").rstrip("/"),
        gateway_url=env("IG3_GATEWAY_URL", public).rstrip("/"), public_url=public,
        default_model=env("IG3_TELEGRAM_MODEL", "ig3/auto"),
        edit_interval_s=float(env("IG3_TELEGRAM_EDIT_INTERVAL_S", "1.0")),
        memory_messages=int(env("IG3_TELEGRAM_MEMORY", "12")),
        max_tokens=int(env("IG3_TELEGRAM_MAX_TOKENS", "512")),
    )
