"""A local stand-in of the Telegram Bot API: an aiohttp server on a free loopback port that
answers ``/bot<token>/<method>`` the way Telegram does (``{"ok": true, "result": ...}``, Message
objects for sendMessage/editMessageText) and records every call for the tests to assert on.
A wrong token gets Telegram's 401 answer, so a bot built with the wrong token fails visibly."""
from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.conftest import free_port

# One set per test session (here, not in conftest.py: pytest may import a conftest twice under
# two module names, which would give the test and the fixture different random values).
BOT_TOKEN = "123456:" + secrets.token_urlsafe(24)
WEBHOOK_SECRET = "whs_" + secrets.token_urlsafe(24)
EDIT_INTERVAL_S = 0.25


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)
    result: Any = None  # what the stand-in answered (the Message, for sends and edits)


class BotApiStandIn:
    def __init__(self, token: str):
        self.token = token
        self.calls: list[Call] = []
        self._ids = itertools.count(1000)
        self._lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> BotApiStandIn:
        self._thread.start()
        assert self._started.wait(10), "Bot API stand-in did not start"
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def calls_of(self, method: str, chat_id: int | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method
                    and (chat_id is None or int(c.params.get("chat_id", 0)) == chat_id)]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        runner = self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._started.set()
        self._loop.run_forever()

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        if request.content_type == "application/json":
            params = await request.json()
        else:
            params = {k: _maybe_json(v) for k, v in (await request.post()).items()}
        call = Call(method, params)
        with self._lock:
            self.calls.append(call)
        now = int(time.time())
        if method == "getMe":
            result: Any = {"id": 42, "is_bot": True, "first_name": "ig3", "username": "ig3_test_bot"}
        elif method in ("sendMessage", "editMessageText"):
            chat_id = int(params["chat_id"])
            message_id = next(self._ids) if method == "sendMessage" else int(params["message_id"])
            result = {"message_id": message_id, "date": now, "chat": {"id": chat_id, "type": "private"},
                      "from": {"id": 42, "is_bot": True, "first_name": "ig3"}, "text": params.get("text", "")}
            if method == "editMessageText":
                result["edit_date"] = now
        else:
            return web.json_response({"ok": False, "error_code": 404, "description": "Not Found: method not found"},
                                     status=404)
        call.result = result
        return web.json_response({"ok": True, "result": result})


def _maybe_json(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    try:
        return json.loads(v)
    except ValueError:
        return v


def update_json(update_id: int, user_id: int, text: str, message_id: int = 1) -> dict[str, Any]:
    """An Update as Telegram posts it for a private text message (commands carry an entity)."""
    msg: dict[str, Any] = {
        "message_id": message_id, "date": int(time.time()), "text": text,
        "from": {"id": user_id, "is_bot": False, "first_name": "Ada", "username": "ada", "language_code": "en"},
        "chat": {"id": user_id, "first_name": "Ada", "username": "ada", "type": "private"},
    }
    if text.startswith("/"):
        msg["entities"] = [{"offset": 0, "length": len(text.split(" ", 1)[0]), "type": "bot_command"}]
    return {"update_id": update_id, "message": msg}
