"""Redis state of the bot: update claims, per-chat memory and model, wallet links, link codes.

Why Redis: every piece is small, per-key, and short-lived or bounded; ``SET NX`` gives the
idempotency claim in one round trip. Memory is a capped list (``RPUSH`` + ``LTRIM`` in one
pipeline): the bound keeps prompts short and the key small.
"""
from __future__ import annotations

import json
import secrets
from typing import Any

CLAIM_TTL_S = 48 * 3600  # Telegram keeps retrying an update for at most ~24 h
MEMORY_TTL_S = 7 * 24 * 3600
LINK_CODE_TTL_S = 15 * 60


class RedisBotStore:
    def __init__(self, redis: Any, prefix: str = "ig3:tg:", memory_messages: int = 12):
        self.r = redis
        self.p = prefix
        self.memory_messages = memory_messages

    # --- idempotency ---
    def claim_update(self, update_id: int) -> bool:
        """True for the first delivery of this update, False for Telegram's retries."""
        return bool(self.r.set(f"{self.p}upd:{update_id}", "1", nx=True, ex=CLAIM_TTL_S))

    def release_update(self, update_id: int) -> None:
        """After a failure: let Telegram's retry of this update be handled."""
        self.r.delete(f"{self.p}upd:{update_id}")

    def mark_answered(self, update_id: int) -> bool:
        """True the first time (the answer stands), False if this job was already answered."""
        return bool(self.r.set(f"{self.p}ans:{update_id}", "1", nx=True, ex=CLAIM_TTL_S))

    def answered(self, update_id: int) -> bool:
        return bool(self.r.exists(f"{self.p}ans:{update_id}"))

    # --- per-chat memory ---
    def history(self, chat_id: int) -> list[dict[str, str]]:
        return [json.loads(m) for m in self.r.lrange(f"{self.p}mem:{chat_id}", 0, -1)]

    def remember(self, chat_id: int, question: str, answer: str) -> None:
        key = f"{self.p}mem:{chat_id}"
        pipe = self.r.pipeline(transaction=True)
        pipe.rpush(key, json.dumps({"role": "user", "content": question}),
                   json.dumps({"role": "assistant", "content": answer}))
        pipe.ltrim(key, -self.memory_messages, -1)
        pipe.expire(key, MEMORY_TTL_S)
        pipe.execute()

    def forget(self, chat_id: int) -> None:
        self.r.delete(f"{self.p}mem:{chat_id}")

    # --- model per chat ---
    def model(self, chat_id: int) -> str | None:
        v = self.r.get(f"{self.p}model:{chat_id}")
        return v.decode() if isinstance(v, bytes) else v

    def set_model(self, chat_id: int, model: str) -> None:
        self.r.set(f"{self.p}model:{chat_id}", model)

    # --- wallet links ---
    def wallet_of(self, user_id: int) -> str | None:
        v = self.r.get(f"{self.p}wallet:{user_id}")
        return v.decode() if isinstance(v, bytes) else v

    def new_link_code(self, user_id: int) -> str:
        code = secrets.token_urlsafe(24)
        self.r.set(f"{self.p}link:{code}", str(user_id), ex=LINK_CODE_TTL_S)
        return code

    def redeem_link_code(self, code: str, wallet: str) -> int | None:
        """Bind the code's Telegram user to ``wallet``; None if the code is unknown, expired or used."""
        v = self.r.getdel(f"{self.p}link:{code}")
        if v is None:
            return None
        user_id = int(v)
        self.r.set(f"{self.p}wallet:{user_id}", wallet)
        return user_id
