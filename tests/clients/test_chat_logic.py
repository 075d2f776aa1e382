"""Pure parts of ``ig3 chat`` and the bot's Redis store (real Redis, unique prefixes)."""
from __future__ import annotations

from ig3.chat.conversation import AnswerStats, Conversation, InputCollector, RouteInfo, sse_events
from ig3.telegram.bot import Throttle
from ig3.telegram.store import RedisBotStore


def test_history_is_bounded_by_messages_and_chars_and_keeps_the_system_prompt():
    c = Conversation(max_messages=4, max_chars=1000, system="be brief")
    for i in range(5):
        c.record(f"q{i}", f"a{i}")
    assert [m["content"] for m in c.turns] == ["q3", "a3", "q4", "a4"]
    sent = c.messages_with("q5")
    assert sent[0] == {"role": "system", "content": "be brief"}
    assert sent[1]["role"] == "user" and sent[-1] == {"role": "user", "content": "q5"}  # no orphan answer first
    big = Conversation(max_messages=50, max_chars=30)
    big.record("x" * 20, "y" * 20)
    big.record("q", "a")
    assert [m["content"] for m in big.turns] == ["q", "a"]
    c.clear()
    assert c.turns == []


def test_multi_line_input_backslash_and_triple_quote_blocks():
    ic = InputCollector()
    assert ic.feed("first \\") is None and ic.continuing
    assert ic.feed("second") == "first \nsecond"
    assert not ic.continuing
    assert ic.feed('"""') is None
    assert ic.feed("def f():\\") is None  # a backslash inside a block is kept
    assert ic.feed("    return 1") is None
    assert ic.feed('"""') == "def f():\\\n    return 1"
    assert ic.feed("plain") == "plain"


def test_sse_events_stop_at_done_and_skip_comments():
    lines = [b": keep-alive\n", b'data: {"a": 1}\n', b"\n", b"event: x\n", b'data: {"b": 2}\r\n', b"data: [DONE]\n",
             b'data: {"c": 3}\n']
    assert list(sse_events(lines)) == [{"a": 1}, {"b": 2}]


def test_route_line_from_headers():
    edge = RouteInfo.from_headers({"X-Ig3-Route": "edge", "x-ig3-device": "dev-1", "x-ig3-model": "tiny",
                                   "x-ig3-route-reason": "edge first", "x-ig3-cache": "miss"})
    assert edge.describe() == "edge device dev-1 · tiny · reason edge first"
    assert RouteInfo.from_headers({"x-ig3-route": "cloud", "x-ig3-endpoint": "ep"}).describe() == "cloud (ep)"


def test_tokens_per_second_decode_rate_or_end_to_end_for_a_burst():
    assert AnswerStats(11, 0.2, 1.0, 1.2).tokens_per_s == (10.0, "tok/s")
    rate, label = AnswerStats(16, 1.0, 0.0003, 2.0).tokens_per_s
    assert (rate, label) == (8.0, "tok/s end-to-end")
    assert AnswerStats(None, None, 0.0, 1.0).tokens_per_s is None
    assert "16 tokens" in AnswerStats(16, 1.0, 0.0003, 2.0).describe()


def test_throttle_counts_the_interval_from_the_end_of_the_last_edit():
    now = [0.0]
    t = Throttle(0.5, clock=lambda: now[0])
    assert t.due()
    t.mark()
    now[0] = 0.4
    assert not t.due()
    now[0] = 0.6  # the edit started at 0.6 took until 1.0: the next is due at 1.5, not 1.1
    assert t.due()
    now[0] = 1.0
    t.mark()
    now[0] = 1.2
    assert not t.due()
    now[0] = 1.5
    assert t.due()


def test_bot_store_claims_memory_and_link_codes_on_real_redis(redis_url, redis_prefix):
    import redis

    r = redis.Redis.from_url(redis_url)
    s = RedisBotStore(r, prefix=redis_prefix, memory_messages=4)
    assert s.claim_update(7) is True
    assert s.claim_update(7) is False  # Telegram's retry of the same update
    s.release_update(7)
    assert s.claim_update(7) is True
    for i in range(3):
        s.remember(5, f"q{i}", f"a{i}")
    assert [m["content"] for m in s.history(5)] == ["q1", "a1", "q2", "a2"]
    s.forget(5)
    assert s.history(5) == []
    code = s.new_link_code(99)
    assert s.wallet_of(99) is None
    assert s.redeem_link_code(code, "0xabc") == 99
    assert s.redeem_link_code(code, "0xdef") is None  # one use
    assert s.wallet_of(99) == "0xabc"
    assert s.mark_answered(1) is True and s.mark_answered(1) is False and s.answered(1)


def test_model_output_cannot_drive_the_terminal():
    from ig3.chat.repl import terminal_safe

    hostile = "ok\x1b[2J\x1b]0;pwned\x07\rover\bwrite\x7f\tand\nnext"
    shown = terminal_safe(hostile)
    assert not any(ord(c) < 32 and c not in "\t\n" for c in shown) and "\x7f" not in shown
    assert shown == "ok\\x1b[2J\\x1b]0;pwned\\x07\\x0dover\\x08write\\x7f\tand\nnext"
