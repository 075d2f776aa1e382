"""The bot's calls to the LLM gateway, as the linked wallet (aiohttp: already in the venv, async
like the Bot API client).

Each call carries a short-lived access token issued for the wallet (scope ``chat``), so the
gateway bills the wallet and its own limits apply; the token is never stored or logged.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, AsyncIterator

import aiohttp

TOKEN_TTL_S = 900


def wallet_token(wallet: str) -> str:
    from ig3.identity.service import settings, token_service

    token, _ = token_service().issue(wallet, "wallet", ("chat",), settings().default_tier, ttl_s=TOKEN_TTL_S)
    return token


@dataclass
class GatewayFailure(Exception):
    status: int
    code: str
    message: str


async def _failure(resp: aiohttp.ClientResponse) -> GatewayFailure:
    try:
        e = (await resp.json(content_type=None) or {}).get("error") or {}
    except (ValueError, aiohttp.ContentTypeError):
        e = {}
    return GatewayFailure(resp.status, str(e.get("code") or "error"), str(e.get("message") or resp.reason))


class Gateway:
    def __init__(self, base_url: str, token: str, session: aiohttp.ClientSession):
        self.base_url, self._headers, self._s = base_url, {"authorization": f"Bearer {token}"}, session

    async def get(self, path: str) -> Any:
        async with self._s.get(self.base_url + path, headers=self._headers) as resp:
            if resp.status >= 400:
                raise await _failure(resp)
            return await resp.json(content_type=None)

    async def stream_chat(self, messages: list[dict[str, str]], model: str, max_tokens: int,
                          meta: dict[str, Any]) -> AsyncIterator[str]:
        """Content deltas; ``meta`` gets the route headers and the final usage."""
        body = {"model": model, "messages": messages, "stream": True, "max_tokens": max_tokens,
                "stream_options": {"include_usage": True}}
        async with self._s.post(self.base_url + "/v1/chat/completions", json=body, headers=self._headers,
                                timeout=aiohttp.ClientTimeout(total=600, sock_read=120)) as resp:
            if resp.status >= 400:
                raise await _failure(resp)
            meta["route"] = resp.headers.get("x-ig3-route")
            meta["device"] = resp.headers.get("x-ig3-device")
            async for raw in resp.content:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("error"):
                    e = event["error"]
                    raise GatewayFailure(500, str(e.get("code") or "stream_error"), str(e.get("message")))
                if event.get("usage"):
                    meta["usage"] = event["usage"]
                for choice in event.get("choices") or []:
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        yield delta
