"""Rate limits, daily token quotas and /usage: the pure decisions, the counts in the store, and
the ready-made bot on the loopback server (a notice once, admins exempt, counts that survive a
restart)."""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import genbot
from chat_workers import one_slot
from chat_world import scene, settle
from genbot.chatbot import ChatBot
from genbot.commands import Texts
from genbot.quota import (
    DAY,
    KEEP_DAYS,
    LimitTexts,
    Notices,
    Rate,
    RateLimiter,
    Refusal,
    Usage,
    Used,
    day_of,
    estimate_tokens,
    format_wait,
    next_midnight,
    over_quota,
)
from genbot.settings import Settings, SettingsError
from genbot.store import Store
from genbot.streaming import Streamer
from genbot.testing import DiscordServer, FakeChannel, FakeUser, run_bot

FAST: dict[str, Any] = {
    "guild_ready_timeout": 0.05,
    "shutdown_timeout": 2.0,
    "close_streamers": False,
}
NOON = 1_767_225_600.0 + DAY / 2  # 2026-01-01 12:00 UTC

# --- pure decisions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [
        ("6/minute", 6, 60.0),
        ("1/second", 1, 1.0),
        ("100 / day", 100, DAY),
        ("20/5 minutes", 20, 300.0),
        ("3/h", 3, 3600.0),
        ("2/Hours", 2, 3600.0),
    ],
)
def test_rates_parse(text: str, count: int, period: float) -> None:
    assert Rate.parse(text) == Rate(count, period, text.strip())


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("6", "must be '<count>/<period>'"),
        ("6/fortnight", "must be '<count>/<period>'"),
        ("6/ms", "must be '<count>/<period>'"),
        ("-1/minute", "must be '<count>/<period>'"),
        ("0/minute", "the count must be from 1"),
        ("6/0 minutes", "the period.s multiple must be at least 1"),
    ],
)
def test_bad_rates_are_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Rate.parse(text)
    with pytest.raises(SettingsError, match=f"setting 'user_rate': {reason}"):
        Settings().updated({"user_rate": text}, "test")
    assert Rate.parse("  ") is None


@given(
    count=st.integers(1, 5),
    gaps=st.lists(st.floats(0, 30, allow_nan=False), min_size=1, max_size=40),
)
def test_the_rate_limit_is_a_sliding_window(count: int, gaps: list[float]) -> None:
    """Whatever the arrivals: a chat is let through exactly when fewer than `count` chats were
    let through in the `period` before it, and a refused one is told how long to wait."""
    limiter, period = RateLimiter(Rate(count, 60.0, "")), 60.0
    now, passed = 0.0, []
    for gap in gaps:
        now += gap
        recent = [t for t in passed if t > now - period]
        wait = limiter.wait("u", now)
        assert (wait == 0) == (len(recent) < count)
        if wait == 0:
            limiter.hit("u", now)
            passed.append(now)
        else:
            assert wait == pytest.approx(recent[-count] + period - now)
            # after the wait it may go (to float rounding: now + wait is not exactly t + period)
            assert limiter.wait("u", now + wait) == pytest.approx(0.0, abs=1e-9)


def test_no_rate_is_no_limit_and_idle_keys_are_forgotten() -> None:
    free = RateLimiter(None)
    for _ in range(100):
        free.hit("u", 0.0)
    assert free.wait("u", 0.0) == 0
    limiter = RateLimiter(Rate(1, 10.0, "1/10 s"))
    for user in range(3000):
        limiter.hit(user, float(user))
    assert limiter.wait(2999, 2999.0) == 10.0
    assert len(limiter._hits) < 3000  # the long idle ones were dropped


def test_notices_once_until_the_limit_resets() -> None:
    notices = Notices()
    assert notices.first("k", until=100.0, now=0.0)
    assert not notices.first("k", until=100.0, now=50.0)
    assert notices.first("other", until=100.0, now=50.0)
    assert notices.first("k", until=200.0, now=100.0)  # reset: told again


def test_quotas() -> None:
    assert over_quota(10, 0, 10, 0, NOON) is None  # off
    assert over_quota(9, 10, 99, 100, NOON) is None
    user = over_quota(10, 10, 0, 100, NOON)
    assert user == Refusal("user_quota", "10", next_midnight(NOON))
    assert over_quota(0, 10, 100, 100, NOON) == Refusal("server_quota", "100", NOON + DAY / 2)
    assert day_of(NOON) == "2026-01-01" and day_of(next_midnight(NOON)) == "2026-01-02"


def test_tokens_and_texts() -> None:
    assert estimate_tokens(deltas=10, chars=12) == 10  # one delta per token
    assert estimate_tokens(deltas=1, chars=400) == 100  # a backend that sends big chunks
    assert estimate_tokens(0, 0) == 0
    assert [format_wait(s) for s in (0.2, 59, 61, 3600, 3601, 5 * 3600 + 12 * 60)] == [
        "1 s",
        "59 s",
        "2 min",
        "1 h",
        "1 h 1 min",
        "5 h 12 min",
    ]
    notice = LimitTexts().notice(Refusal("rate", "6/minute", NOON + 30), NOON)
    assert notice == "You are sending messages too fast (limit: 6/minute). Try again in 30 s."


def test_the_new_settings_are_checked(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    bad = {
        "data_dir": ("", "must name a folder"),
        "user_tokens_per_day": ("-1", "must be from 0 (no quota)"),
        "server_tokens_per_day": ("1.5", "expected a whole number"),
    }
    for name, (value, reason) in bad.items():
        with pytest.raises(SettingsError, match=re.escape(f"setting '{name}': {reason}")):
            Settings().updated({name: value}, "test")
    with pytest.raises(SettingsError, match="is a file, not a folder"):
        Settings().updated({"data_dir": str(tmp_path / "file")}, "test")
    with pytest.raises(SettingsError, match="cannot be created"):
        Settings().updated({"data_dir": str(tmp_path / "file" / "below")}, "test")
    good = Settings().updated({"data_dir": str(tmp_path / "new"), "user_rate": "6/minute"}, "t")
    assert good.data_dir == str(tmp_path / "new") and good.user_rate == "6/minute"


# --- the counts in the store -------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_usage_counts_per_user_server_and_day(tmp_path: Path) -> None:
    clock = Clock(NOON)
    usage = Usage(Store(tmp_path), user_tokens_per_day=10, server_tokens_per_day=15, clock=clock)
    await usage.open()
    try:
        await usage.record(1, 100, 6)
        await usage.record(1, None, 3)  # a DM: the user's count only
        await usage.record(2, 100, 9)
        assert await usage.used("user", 1) == Used(9, 2)
        assert await usage.used("server", 100) == Used(15, 2)
        assert await usage.admit(1, None) is None  # 9 < 10
        refusal = await usage.admit(2, 100)  # the server is at 15
        assert refusal == Refusal("server_quota", "15", NOON + DAY / 2, notify=True)
        assert await usage.admit(2, 100) == Refusal("server_quota", "15", NOON + DAY / 2, False)
        assert await usage.admit(3, 100, exempt=True) is None
        await usage.record(1, None, 1)
        assert (await usage.admit(1, None)) == Refusal("user_quota", "10", NOON + DAY / 2)
        clock.now = next_midnight(NOON)  # a new day: counts and notices start afresh
        assert await usage.used("user", 1) == Used()
        assert await usage.admit(1, None) is None and await usage.admit(2, 100) is None
    finally:
        await usage.store.close()


async def test_old_days_are_dropped_when_the_counts_open(tmp_path: Path) -> None:
    clock = Clock(NOON)
    usage = Usage(Store(tmp_path), clock=clock)
    await usage.open()
    await usage.record(1, None, 5)
    await usage.store.close()
    clock.now = NOON + (KEEP_DAYS - 1) * DAY
    await usage.open()
    assert await usage.used("user", 1, NOON) == Used(5, 1)
    await usage.store.close()
    clock.now = NOON + (KEEP_DAYS + 1) * DAY
    await usage.open()
    assert await usage.used("user", 1, NOON) == Used()
    await usage.store.close()


async def test_a_rate_limited_user_is_refused_until_the_window_moves(tmp_path: Path) -> None:
    clock = Clock(NOON)
    usage = Usage(Store(tmp_path), rate=Rate.parse("2/minute"), clock=clock)
    await usage.open()
    try:
        assert await usage.admit(1, None) is None
        assert await usage.admit(1, None) is None
        first = await usage.admit(1, None)
        assert first == Refusal("rate", "2/minute", NOON + 60, notify=True)
        clock.now += 30
        assert await usage.admit(1, None) == Refusal("rate", "2/minute", NOON + 60, notify=False)
        assert await usage.admit(2, None) is None  # another user
        clock.now = NOON + 60
        assert await usage.admit(1, None) is None
    finally:
        await usage.store.close()


async def test_a_failing_store_lets_chats_through(tmp_path: Path) -> None:
    usage = Usage(Store(tmp_path), user_tokens_per_day=1)
    await usage.open()
    try:
        await usage.store.execute("DROP TABLE usage")  # say, someone edited the database
        assert await usage.admit(1, None) is None
        await usage.record(1, None, 5)  # logged, not raised
    finally:
        await usage.store.close()
    assert await usage.admit(1, None) is None  # a closed store, the same


# --- the bot on the loopback server ------------------------------------------------------------


class World:
    def __init__(self, server: DiscordServer) -> None:
        self.server = server
        self.guild = server.create_guild("Guild")
        users = [server.create_user(n) for n in ("alice", "bob", "admin")]
        for user in users:
            server.add_member(self.guild, user)
        self.alice, self.bob, self.admin = users
        self.general = server.create_channel(self.guild, "general")

    def replies(self, channel: FakeChannel) -> list[str]:
        return [m["content"] for m in self.server.bot_messages(channel)]


world = pytest.fixture(scene(World), name="world")


backend = pytest.fixture(one_slot, name="backend")


def make_bot(w: World, backend: Streamer, data_dir: Path, **values: Any) -> ChatBot:
    defaults = {"edit_interval": 0.2, "data_dir": str(data_dir), "admins": [w.admin.id]}
    return ChatBot(Settings().updated({**defaults, **values}, "test"), backend=backend, **FAST)


async def ask(
    bot: ChatBot, w: World, channel: FakeChannel, user: FakeUser, text: str, expect: str | None
) -> None:
    """`user` says `text`; wait for the bot's message `expect`, or (None) for it to settle."""
    before = len(w.replies(channel))
    seen = asyncio.ensure_future(
        bot.wait_for("message", check=lambda m: m.content.endswith(text), timeout=10)
    )
    await w.server.send_message(channel, user, text, mentions_bot=channel is w.general)
    await seen
    if expect is not None:
        await w.server.wait_for(lambda: expect in w.replies(channel)[before:], timeout=15)
    await settle(bot)


RATE_NOTE = "*You are sending messages too fast (limit: 2/hour). Try again in"


async def test_a_rate_limited_user_is_told_once_and_admins_are_exempt(
    world: World, backend: Streamer, tmp_path: Path
) -> None:
    w = world
    bot = make_bot(w, backend, tmp_path, user_rate="2/hour")
    alice, admin = w.server.create_dm(w.alice), w.server.create_dm(w.admin)
    async with run_bot(bot, w.server):
        await ask(bot, w, alice, w.alice, "one", "answer: one")
        await ask(bot, w, alice, w.alice, "two", "answer: two")
        await ask(bot, w, alice, w.alice, "three", None)
        await ask(bot, w, alice, w.alice, "four", None)
        for text in ("one", "two", "three", "four"):
            await ask(bot, w, admin, w.admin, text, f"answer: {text}")
    replies = w.replies(alice)
    assert replies[:2] == ["answer: one", "answer: two"]
    assert len(replies) == 3 and replies[2].startswith(RATE_NOTE), replies
    notice = w.server.bot_messages(alice)[2]
    three = next(m for m in w.server.messages(alice) if m["content"] == "three")
    assert notice["message_reference"]["message_id"] == three["id"]
    assert w.replies(admin) == [f"answer: {t}" for t in ("one", "two", "three", "four")]


USER_QUOTA_NOTE = "*You have used your 5 tokens for today."


async def test_a_used_up_quota_survives_a_restart(
    world: World, backend: Streamer, tmp_path: Path
) -> None:
    """ "answer: one" counts 3 tokens (11 characters / 4): two replies use up a quota of 5."""
    w = world
    dm = w.server.create_dm(w.alice)
    async with run_bot(make_bot(w, backend, tmp_path, user_tokens_per_day=5), w.server) as bot:
        await ask(bot, w, dm, w.alice, "one", "answer: one")
        await ask(bot, w, dm, w.alice, "two", "answer: two")
        await ask(bot, w, dm, w.alice, "three", None)
    assert len(w.replies(dm)) == 3 and w.replies(dm)[2].startswith(USER_QUOTA_NOTE)
    # A new bot (a restart) on the same data_dir: still over the quota.
    async with run_bot(make_bot(w, backend, tmp_path, user_tokens_per_day=5), w.server) as bot:
        assert await bot.usage.used("user", w.alice.id) == Used(6, 2)
        await ask(bot, w, dm, w.alice, "four", None)
        await ask(bot, w, dm, w.alice, "five", None)
    replies = w.replies(dm)
    assert len(replies) == 4 and replies[3].startswith(USER_QUOTA_NOTE), replies
    # Another data_dir knows nothing of it.
    async with run_bot(
        make_bot(w, backend, tmp_path / "other", user_tokens_per_day=5), w.server
    ) as bot:
        await ask(bot, w, dm, w.alice, "six", "answer: six")


async def test_a_server_quota_tells_each_user_once(
    world: World, backend: Streamer, tmp_path: Path
) -> None:
    w = world
    bot = make_bot(w, backend, tmp_path, server_tokens_per_day=3)
    async with run_bot(bot, w.server):
        await ask(bot, w, w.general, w.alice, "one", "answer: one")  # 3 tokens: used up
        await ask(bot, w, w.general, w.bob, "two", None)
        await ask(bot, w, w.general, w.bob, "three", None)
        await ask(bot, w, w.general, w.alice, "four", None)
        await ask(bot, w, w.general, w.admin, "five", "answer: five")
        # A DM is not the server's: Bob is answered there.
        await ask(bot, w, w.server.create_dm(w.bob), w.bob, "six", "answer: six")
    note = "*This server has used its 3 tokens for today."
    replies = w.replies(w.general)
    assert replies[0] == "answer: one" and replies[-1] == "answer: five"
    assert len(replies) == 4 and all(r.startswith(note) for r in replies[1:3]), replies


async def usage_of(w: World, channel: FakeChannel, user: FakeUser, **options: Any) -> str:
    interaction = await w.server.invoke_command(channel, user, "usage", options)
    response = await interaction.wait_response()
    assert response["ephemeral"]
    return str(response["content"])


async def test_usage_shows_a_users_own_use_and_admins_a_servers(
    world: World, backend: Streamer, tmp_path: Path
) -> None:
    w = world
    bot = make_bot(w, backend, tmp_path, user_tokens_per_day=50, user_rate="6/minute")
    async with run_bot(bot, w.server):
        assert await usage_of(w, w.general, w.alice) == (
            "Today (UTC) you used 0 tokens in 0 replies. Your daily quota is 50 tokens. "
            "Your rate limit is 6/minute."
        )
        await ask(bot, w, w.general, w.alice, "one", "answer: one")
        await ask(bot, w, w.server.create_dm(w.alice), w.alice, "hello", "answer: hello")
        await ask(bot, w, w.general, w.bob, "two", "answer: two")
        tokens = math.ceil(len("answer: one") / 4) + math.ceil(len("answer: hello") / 4)
        mine = await usage_of(w, w.general, w.alice)
        assert mine.startswith(f"Today (UTC) you used {tokens} tokens in 2 replies.")
        assert await usage_of(w, w.general, w.alice, server=True) == Texts.usage_not_admin
        assert await usage_of(w, w.general, w.admin, server=True) == (
            "Today (UTC) this server used 6 tokens in 2 replies."
        )
        dm = w.server.create_dm(w.admin)
        assert await usage_of(w, dm, w.admin, server=True) == Texts.usage_needs_server


async def test_usage_of_a_bot_that_counts_nothing(world: World) -> None:
    async with run_bot(genbot.Genbot(**{**FAST, "close_streamers": True}), world.server):
        assert await usage_of(world, world.general, world.alice) == Texts.usage_off


def test_a_reloaded_rate_applies_to_the_chats_already_counted() -> None:
    """/reload may change user_rate: the new count applies at once, both ways."""
    limiter = RateLimiter(Rate(5, 60.0, ""))
    for second in range(5):
        limiter.hit("u", float(second))
    limiter.rate = Rate(2, 60.0, "")  # stricter: the two latest chats fill the window
    assert limiter.wait("u", 10.0) == pytest.approx(3.0 + 60.0 - 10.0)
    limiter.rate = Rate(2, 1.0, "")
    limiter.hit("u", 100.0)
    limiter.hit("u", 100.5)
    limiter.rate = Rate(3, 1.0, "")  # looser: room for one more
    assert limiter.wait("u", 100.6) == 0
    limiter.hit("u", 100.6)
    limiter.rate = Rate(3, 60.0, "")
    assert limiter.wait("u", 100.7) == pytest.approx(100.0 + 60.0 - 100.7)
