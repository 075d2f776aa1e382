"""The answer worker in-process: python-telegram-bot against the Bot API stand-in, real Redis,
and an in-memory gateway port (the real gateway is exercised in test_clients_e2e) that records
what it was asked, so memory and failure answers can be asserted exactly."""
from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import redis

from ig3.telegram.bot import FAILED, NO_BALANCE, NO_CAPACITY, AnswerWorker
from ig3.telegram.gateway import GatewayFailure
from ig3.telegram.settings import BotSettings
from ig3.telegram.store import RedisBotStore
from tests.clients.botapi_standin import BOT_TOKEN

_update_ids = itertools.count(int(time.time() * 1000))


class GatewayPort:
    def __init__(self, answer: str = "", failure: GatewayFailure | None = None):
        self.answer, self.failure, self.asked = answer, failure, []

    async def stream_chat(self, messages, model, max_tokens, meta):
        self.asked.append((messages, model, max_tokens))
        if self.failure:
            raise self.failure
        meta.update(route="edge", device="dev-7", usage={"completion_tokens": len(self.answer.split())})
        for word in self.answer.split(" "):
            await asyncio.sleep(0.01)
            yield word + " "


@pytest.fixture
def store(redis_url, redis_prefix):
    return RedisBotStore(redis.Redis.from_url(redis_url), prefix=redis_prefix, memory_messages=4)


@pytest.fixture
def standin():
    from tests.clients.botapi_standin import BotApiStandIn

    s = BotApiStandIn(BOT_TOKEN).start()
    yield s
    s.stop()


def _run(standin, store, gateway, job, interval_s=0.05):
    from telegram import Bot

    settings = BotSettings(BOT_TOKEN, "secret", standin.url, "http://gateway.invalid", "http://gateway.invalid",
                           "ig3/auto", interval_s, 4, 64)

    async def main():
        bot = Bot(BOT_TOKEN, base_url=f"{standin.url}/bot")
        try:
            return await AnswerWorker(settings, store, bot, lambda wallet: gateway).answer(job)
        finally:
            await bot.shutdown()

    return asyncio.run(main())


def _job(chat_id: int, text: str) -> dict:
    return {"update_id": next(_update_ids), "chat_id": chat_id, "message_id": 5, "wallet": "0xabc",
            "model": "tiny-llama", "text": text}


def test_answers_are_remembered_per_chat_within_the_bound_and_sent_back_as_context(standin, store):
    gw = GatewayPort("edge devices answer here")
    for i in range(3):
        assert _run(standin, store, gw, _job(11, f"question {i}")) == "answered"
    last_messages, model, max_tokens = gw.asked[-1]
    assert model == "tiny-llama" and max_tokens == 64
    # memory bound 4: the two previous exchanges, then the new question
    assert [m["content"] for m in last_messages] == ["question 0", "edge devices answer here", "question 1",
                                                    "edge devices answer here", "question 2"]
    assert [m["content"] for m in store.history(11)][0] == "question 1"
    assert store.history(12) == []  # another chat has its own memory
    final = standin.calls_of("editMessageText", 11)[-1].params["text"]
    assert final == "edge devices answer here\n\n— edge device dev-7 · 4 tokens"


def test_a_redelivered_job_is_not_answered_twice(standin, store):
    gw = GatewayPort("one two three")
    job = _job(21, "hi")
    assert _run(standin, store, gw, job) == "answered"
    edits = len(standin.calls_of("editMessageText", 21))
    assert _run(standin, store, gw, job) == "duplicate"
    assert len(standin.calls_of("editMessageText", 21)) == edits and len(gw.asked) == 1


@pytest.mark.parametrize(("failure", "text"), [
    (GatewayFailure(402, "insufficient_balance", "no credits"), NO_BALANCE),
    (GatewayFailure(503, "no_capacity", "all busy"), NO_CAPACITY),
    (GatewayFailure(429, "rate_limited", "slow down"), NO_CAPACITY),
    (GatewayFailure(500, "upstream_error", "boom"), FAILED.format(code="upstream_error")),
])
def test_failures_become_clear_messages_and_are_not_remembered(standin, store, failure, text):
    chat = 30 + failure.status
    assert _run(standin, store, GatewayPort(failure=failure), _job(chat, "hi")) == f"failed:{failure.status}"
    assert standin.calls_of("editMessageText", chat)[-1].params["text"] == text
    assert store.history(chat) == []
