"""Webhook side and worker side of the bot (see the package docstring for the design).

Both take their ports (store, job queue, Bot API client, gateway) as arguments, so tests run
them against real Redis, moto SQS, a stand-in Bot API and a running gateway.
"""
from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ig3.errors import BadRequest, Unauthorized
from ig3.telegram.gateway import GatewayFailure
from ig3.telegram.settings import BotSettings
from ig3.telegram.store import RedisBotStore

TELEGRAM_MAX_TEXT = 4096
PLACEHOLDER = "…"
WELCOME = ("Hi! I answer with the models of the iG3 edge network.\n"
           "Ask anything. /model to see or pick a model, /balance for your credits, "
           "/link to bind your wallet (your usage is billed to it), /clear to forget this chat.")
NOT_LINKED = "Link your wallet first: send /link and open the link to sign in with it. Usage is billed to that wallet."
NO_BALANCE = "Your wallet's balance is used up. Top it up, then ask again (/balance shows it)."
NO_CAPACITY = "No capacity right now: every device is busy and the cloud fallback is full. Please try again in a minute."
FAILED = "Sorry, that failed ({code}). Please try again."


class JobQueue(Protocol):
    def send(self, job: dict[str, Any]) -> None: ...


class SqsJobQueue:
    def __init__(self, queue_url: str):
        self.queue_url = queue_url

    def send(self, job: dict[str, Any]) -> None:
        import json

        from ig3.aws import client

        client("sqs").send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(job))


def check_secret(settings: BotSettings, header_value: str | None) -> None:
    if not header_value or not hmac.compare_digest(header_value.encode(), settings.webhook_secret.encode()):
        raise Unauthorized("missing or wrong X-Telegram-Bot-Api-Secret-Token", code="invalid_webhook_secret")


def explain(exc: GatewayFailure) -> str:
    if exc.status == 402:
        return NO_BALANCE
    if exc.status in (429, 503):
        return NO_CAPACITY
    return FAILED.format(code=exc.code)


class WebhookBot:
    """One update in, at most a few quick Bot API calls out; model work goes to the job queue."""

    def __init__(self, settings: BotSettings, store: RedisBotStore, jobs: JobQueue, bot: Any,
                 gateway_for: Callable[[str], Any]):
        self.s, self.store, self.jobs, self.bot, self.gateway_for = settings, store, jobs, bot, gateway_for

    async def handle(self, raw: dict[str, Any]) -> str:
        from telegram import Update

        update_id = raw.get("update_id") if isinstance(raw, dict) else None
        if not isinstance(update_id, int):
            raise BadRequest("not a Telegram Update (no integer update_id)", code="invalid_update")
        if not self.store.claim_update(update_id):
            return "duplicate"
        try:
            update = Update.de_json(raw, self.bot)
            return await self._dispatch(update)
        except BaseException:
            self.store.release_update(update_id)  # Telegram retries it; nothing was half-kept
            raise

    async def _dispatch(self, update: Any) -> str:
        msg = update.effective_message
        if msg is None or not msg.text or update.effective_user is None:
            return "ignored"
        chat_id, user_id, text = msg.chat_id, update.effective_user.id, msg.text.strip()
        if text.startswith("/"):
            cmd, _, arg = text.partition(" ")
            cmd = cmd.split("@", 1)[0].lower()  # "/model@ig3bot" in groups
            handler = {"/start": self._start, "/help": self._start, "/model": self._model,
                       "/balance": self._balance, "/link": self._link, "/clear": self._clear}.get(cmd)
            if handler is None:
                await self.bot.send_message(chat_id=chat_id, text="Unknown command. " + WELCOME)
                return "unknown_command"
            await handler(chat_id, user_id, arg.strip())
            return cmd[1:]
        wallet = self.store.wallet_of(user_id)
        if wallet is None:
            await self.bot.send_message(chat_id=chat_id, text=NOT_LINKED)
            return "not_linked"
        from telegram import ReplyParameters

        placeholder = await self.bot.send_message(chat_id=chat_id, text=PLACEHOLDER,
                                                  reply_parameters=ReplyParameters(message_id=msg.message_id))
        self.jobs.send({"update_id": update.update_id, "chat_id": chat_id, "message_id": placeholder.message_id,
                        "wallet": wallet, "model": self.store.model(chat_id) or self.s.default_model, "text": text})
        return "queued"

    async def _start(self, chat_id: int, user_id: int, arg: str) -> None:
        await self.bot.send_message(chat_id=chat_id, text=WELCOME)

    async def _clear(self, chat_id: int, user_id: int, arg: str) -> None:
        self.store.forget(chat_id)
        await self.bot.send_message(chat_id=chat_id, text="Forgotten: this chat starts afresh.")

    async def _model(self, chat_id: int, user_id: int, arg: str) -> None:
        current = self.store.model(chat_id) or self.s.default_model
        wallet = self.store.wallet_of(user_id)
        names: list[str] = []
        if wallet is not None:
            try:
                names = [m["id"] for m in (await self.gateway_for(wallet).get("/v1/models")).get("data", [])]
            except GatewayFailure as exc:
                await self.bot.send_message(chat_id=chat_id, text=explain(exc))
                return
        if not arg:
            listing = ("\nAvailable: " + ", ".join(names)) if names else ""
            await self.bot.send_message(chat_id=chat_id, text=f"Model: {current}{listing}\nPick one with /model <name>.")
            return
        if names and arg not in names:
            await self.bot.send_message(chat_id=chat_id, text=f"No model '{arg}'. Available: {', '.join(names)}")
            return
        self.store.set_model(chat_id, arg)
        await self.bot.send_message(chat_id=chat_id, text=f"Model set to {arg}.")

    async def _balance(self, chat_id: int, user_id: int, arg: str) -> None:
        wallet = self.store.wallet_of(user_id)
        if wallet is None:
            await self.bot.send_message(chat_id=chat_id, text=NOT_LINKED)
            return
        try:
            b = await self.gateway_for(wallet).get("/v1/billing/balance")
        except GatewayFailure as exc:
            await self.bot.send_message(chat_id=chat_id, text=explain(exc))
            return
        await self.bot.send_message(
            chat_id=chat_id, text=f"Wallet {wallet}\nAvailable: {b['available']} {b.get('unit', '')}\n"
                                  f"Held for running requests: {b['held']}\nTotal: {b['total']}")

    async def _link(self, chat_id: int, user_id: int, arg: str) -> None:
        code = self.store.new_link_code(user_id)
        await self.bot.send_message(
            chat_id=chat_id,
            text=(f"Sign in with your wallet (SIWE) at {self.s.public_url}/v1/auth/nonce + /v1/auth/login, then "
                  f"POST {self.s.public_url}/v1/telegram/link with {{\"code\": \"{code}\"}} and your token. "
                  "The code works once, for 15 minutes."))


@dataclass
class Throttle:
    """At most one edit per ``interval_s`` (Telegram answers faster edits with 429 Retry-After).
    The interval counts from the end of the previous edit: an edit that took long to go out must
    not be followed by one at once."""
    interval_s: float
    clock: Callable[[], float] = time.monotonic
    last: float = float("-inf")

    def due(self) -> bool:
        return self.clock() - self.last >= self.interval_s

    def mark(self) -> None:
        self.last = self.clock()

    def wait_s(self) -> float:
        return max(0.0, self.interval_s - (self.clock() - self.last))


class AnswerWorker:
    """One queued question: stream the answer, edit the placeholder as it grows, remember it."""

    def __init__(self, settings: BotSettings, store: RedisBotStore, bot: Any, gateway_for: Callable[[str], Any]):
        self.s, self.store, self.bot, self.gateway_for = settings, store, bot, gateway_for

    async def answer(self, job: dict[str, Any]) -> str:
        from telegram.error import BadRequest as TgBadRequest
        from telegram.error import RetryAfter

        if self.store.answered(job["update_id"]):
            return "duplicate"
        chat_id, message_id = job["chat_id"], job["message_id"]
        messages = self.store.history(chat_id) + [{"role": "user", "content": job["text"]}]
        meta: dict[str, Any] = {}
        parts: list[str] = []
        shown = PLACEHOLDER
        throttle = Throttle(self.s.edit_interval_s)
        throttle.mark()  # the placeholder itself was the first message

        async def edit(text: str, final: bool = False) -> None:
            nonlocal shown
            text = text[:TELEGRAM_MAX_TEXT]
            if text == shown:
                return
            if final:  # the last edit must land: wait out the interval rather than skip it
                await asyncio.sleep(throttle.wait_s())
            try:
                await self.bot.edit_message_text(text=text, chat_id=chat_id, message_id=message_id)
                shown = text
            except RetryAfter as exc:
                if not final:
                    return  # skip this intermediate edit; the final one still goes out
                await asyncio.sleep(_seconds(exc.retry_after))
                await self.bot.edit_message_text(text=text, chat_id=chat_id, message_id=message_id)
                shown = text
            except TgBadRequest as exc:
                if "not modified" not in str(exc).lower():
                    raise
            finally:
                throttle.mark()

        try:
            async for delta in self.gateway_for(job["wallet"]).stream_chat(messages, job["model"], self.s.max_tokens,
                                                                           meta):
                parts.append(delta)
                if throttle.due():
                    await edit("".join(parts) + " …")
        except GatewayFailure as exc:
            await edit(explain(exc), final=True)
            self.store.mark_answered(job["update_id"])
            return f"failed:{exc.status}"
        answer = "".join(parts).strip() or "(no answer)"
        await edit(answer + "\n\n" + _footer(meta), final=True)
        if self.store.mark_answered(job["update_id"]):
            self.store.remember(chat_id, job["text"], answer)
        return "answered"


def _seconds(retry_after: Any) -> float:
    return retry_after.total_seconds() if hasattr(retry_after, "total_seconds") else float(retry_after)


def _footer(meta: dict[str, Any]) -> str:
    route = meta.get("route")
    where = (f"edge device {meta['device']}" if meta.get("device") else "edge") if route == "edge" else (route or "?")
    tokens = (meta.get("usage") or {}).get("completion_tokens")
    return f"— {where}" + (f" · {tokens} tokens" if tokens is not None else "")
