"""Opt-in memory (genbot.memory) on the loopback Discord with a real Streamer whose scripted
worker records every request: summaries and facts survive a restart and reach the model,
``/memory`` shows and forgets a user's own facts, a blacklisted user's text is never stored,
``/reset`` and deletions drop a summary, ``memory_days`` expires it all, and a failing
summarisation never holds up a reply."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import genbot
from chat_world import Chat, scene
from genbot.chatbot import ChatBot
from genbot.memory import (
    FACT_CHARS,
    MAX_FACTS,
    SUMMARY_INSTRUCTION,
    MemoryStore,
    expired,
    remembered_fact,
)
from genbot.models import ChatRequest
from genbot.settings import Settings
from genbot.store import Store
from genbot.streaming import Stream, Streamer
from genbot.testing import DiscordServer, FakeChannel, FakeUser, run_bot

FAST: dict[str, Any] = {
    "guild_ready_timeout": 0.05,
    "shutdown_timeout": 2.0,
    "close_streamers": False,
}
DAY = 86400.0

#: Every request the scripted model got (summaries and replies), in order.
REQUESTS: list[ChatRequest] = []
#: While set, the model fails every summarisation.
FAIL_SUMMARY = threading.Event()


def _said(request: ChatRequest) -> str:
    users = [m["content"] for m in request.messages if m["role"] == "user"]
    last = users[-1].splitlines()[-1] if users else ""
    words = last.split(": ", 1)[-1].split(" ")
    return " ".join(word for word in words if not word.startswith("@"))


@genbot.streamer
def recorder(streams: list[Stream]) -> None:
    """Answers ``answer: <what was said>``; a summarisation is answered with ``summary:`` and
    the transcript it was given (so whatever reached it would be stored), or fails."""
    for stream in streams:
        request = stream.data
        if request.settings.max_new_tokens == 1:  # the warm-up
            stream.write("ok")
            stream.close()
            continue
        REQUESTS.append(request)
        if request.messages[0]["content"] == SUMMARY_INSTRUCTION:
            if FAIL_SUMMARY.is_set():
                stream.fail("the summariser broke")
                continue
            lines = request.messages[-1]["content"].split("Messages that follow:\n", 1)[-1]
            stream.write("summary: " + " | ".join(lines.splitlines()))
        else:
            stream.write(f"answer: {_said(request)}")
        stream.close()


@pytest.fixture(name="backend")
def backend_fixture() -> Iterator[Streamer]:
    REQUESTS.clear()
    FAIL_SUMMARY.clear()
    recorder.start_thread(maximum=1)
    try:
        yield recorder
    finally:
        recorder.close()


chat = pytest.fixture(scene(Chat), name="chat")


def make_bot(backend: Streamer, data_dir: Path, **values: Any) -> ChatBot:
    defaults = {
        "edit_interval": 0.2,
        "stall_timeout": 30.0,
        "queue_timeout": 30.0,
        "memory": True,
        "context_chars": 60,
        "data_dir": str(data_dir),
    }
    return ChatBot(Settings().updated({**defaults, **values}, "test"), backend=backend, **FAST)


async def settle(bot: ChatBot) -> None:
    """No attend running, no summary being made (bounded)."""
    for _ in range(3):  # a reply may start a summary, a summary ends before the next check
        running = bot.attending()
        if running:
            await asyncio.wait(running, timeout=30)
        await bot.memory.idle(timeout=30)


async def ask(chat: Chat, bot: ChatBot, channel: FakeChannel, user: FakeUser, text: str) -> None:
    """`user` says `text` (mentioning the bot outside DMs) and gets the reply; then the bot
    settles."""
    assert bot.user is not None
    content = text if channel is chat.dm else f"<@{bot.user.id}> {text}"
    await chat.server.send_message(channel, user, content)
    await chat.wait_for_reply(channel, f"answer: {text}")
    await settle(bot)


def replies() -> list[ChatRequest]:
    return [r for r in REQUESTS if r.messages[0]["content"] != SUMMARY_INSTRUCTION]


def summaries() -> list[ChatRequest]:
    return [r for r in REQUESTS if r.messages[0]["content"] == SUMMARY_INSTRUCTION]


def system_of(request: ChatRequest) -> str:
    return request.messages[0]["content"] if request.messages[0]["role"] == "system" else ""


async def overflow(chat: Chat, bot: ChatBot) -> None:
    """Alice asks the bot to remember a fact, then says more than the budget holds: the first
    exchange is summarised."""
    await ask(chat, bot, chat.dm, chat.alice, "remember that I prefer Python")
    await ask(chat, bot, chat.dm, chat.alice, "tell me about snakes")
    assert summaries(), "the context overflowed: a summary was made"


# -- the pure decisions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fact"),
    [
        ("remember that I prefer Python", "I prefer Python"),
        ("<@123> Remember that  my cat is\nTom", "my cat is Tom"),
        ("@genbot please remember: tabs, not spaces", "tabs, not spaces"),
        ("do you remember that song?", None),
        ("remember", None),
        ("remember that ", None),
        ("I remember that", None),
    ],
)
def test_a_fact_is_a_message_that_asks_to_remember(text: str, fact: str | None) -> None:
    assert remembered_fact(text) == fact


def test_a_fact_is_cut_to_its_bound() -> None:
    fact = remembered_fact("remember that " + "x" * 1000)
    assert fact is not None and len(fact) == FACT_CHARS


def test_expiry_is_by_whole_days() -> None:
    assert not expired(0.0, 30 * DAY, 30)
    assert expired(0.0, 30 * DAY + 1, 30)


async def test_facts_are_bounded_per_user_and_place(tmp_path: Path) -> None:
    async with Store(tmp_path) as store:
        rows = MemoryStore(store)
        for i in range(MAX_FACTS + 5):
            await rows.add_fact(1, 10, f"fact {i}", float(i), source=i)
        await rows.add_fact(1, 20, "elsewhere", 0.0, source=None)
        assert not await rows.add_fact(1, 10, "again", 99.0, source=3 + 5)  # same message
        kept = [f.text for f in await rows.facts(1, 10)]
        assert kept == [f"fact {i}" for i in range(5, MAX_FACTS + 5)]
        assert [f.text for f in await rows.facts(1, 20)] == ["elsewhere"]
        assert await rows.facts(2, 10) == []


async def test_summaries_and_facts_older_than_memory_days_are_deleted(tmp_path: Path) -> None:
    async with Store(tmp_path) as store:
        rows = MemoryStore(store)
        await rows.put_summary(5, "old talk", [100, 101], now=0.0)
        await rows.put_summary(5, "old talk, extended", [102], now=20 * DAY)
        await rows.add_fact(1, 0, "old fact", 0.0, source=None)
        await rows.add_fact(1, 0, "new fact", 20 * DAY, source=None)
        await rows.prune(30 * DAY, 30)
        summary = await rows.summary(5)
        assert summary is not None and (summary.created, summary.covered) == (0.0, 102)
        # extended since, but what it holds is from day 0: it goes with day 0's rows
        await rows.prune(31 * DAY, 30)
        assert await rows.summary(5) is None
        assert await store.fetchall("SELECT * FROM memory_covered") == []
        assert [f.text for f in await rows.facts(1, 0)] == ["new fact"]


# -- across a restart ---------------------------------------------------------------------------


async def test_the_summary_and_the_facts_reach_the_model_after_a_restart(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    async with run_bot(bot := make_bot(backend, tmp_path), chat.server):
        await overflow(chat, bot)
        stored = await bot.memory.rows.summary(chat.dm.id)
    assert stored is not None and "remember that I prefer Python" in stored.text
    # the summarised messages left the context: the summary stands for them
    REQUESTS.clear()
    async with run_bot(bot := make_bot(backend, tmp_path), chat.server):
        await ask(chat, bot, chat.dm, chat.alice, "what do I like")
    request = replies()[0]
    system = system_of(request)
    assert "summary: alice: remember that I prefer Python" in system
    assert "Facts alice asked you to remember:\n- I prefer Python" in system
    contents = "\n".join(m["content"] for m in request.messages[1:])
    assert "remember that I prefer Python" not in contents


async def test_memory_off_stores_nothing_and_adds_nothing(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    async with run_bot(bot := make_bot(backend, tmp_path, memory=False), chat.server):
        await ask(chat, bot, chat.dm, chat.alice, "remember that I prefer Python")
        await ask(chat, bot, chat.dm, chat.alice, "tell me about snakes")
        assert summaries() == []
        assert "remember" not in system_of(replies()[-1])
        assert await bot.memory.rows.rows() == []


async def test_a_failing_summary_does_not_hold_up_the_reply(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    FAIL_SUMMARY.set()
    async with run_bot(bot := make_bot(backend, tmp_path), chat.server):
        await overflow(chat, bot)  # every reply came
        await ask(chat, bot, chat.dm, chat.alice, "and lizards")
        assert await bot.memory.rows.summary(chat.dm.id) is None
        assert len(summaries()) >= 2  # each overflow tried again
        FAIL_SUMMARY.clear()
        await ask(chat, bot, chat.dm, chat.alice, "and frogs")
        assert await bot.memory.rows.summary(chat.dm.id) is not None


# -- /reset, deletions, expiry --------------------------------------------------------------------


async def test_reset_drops_the_summary(chat: Chat, backend: Streamer, tmp_path: Path) -> None:
    async with run_bot(bot := make_bot(backend, tmp_path), chat.server):
        await overflow(chat, bot)
        await settle(bot)
        interaction = await chat.server.invoke_command(chat.dm, chat.alice, "reset")
        await interaction.wait_response()
        await ask(chat, bot, chat.dm, chat.alice, "fresh start")
        assert "summary:" not in system_of(replies()[-1])
        assert await bot.memory.rows.summary(chat.dm.id) is None
        everything = " ".join(m["content"] for m in replies()[-1].messages)
        assert "snakes" not in everything


async def test_deleting_a_summarised_message_drops_the_summary_and_its_fact(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    async with run_bot(bot := make_bot(backend, tmp_path), chat.server):
        await overflow(chat, bot)
        first = chat.server.messages(chat.dm)[0]
        assert first["content"] == "remember that I prefer Python"
        bot.memory.forgot.clear()
        await chat.server.delete_message(chat.dm, first["id"])
        await asyncio.wait_for(bot.memory.forgot.wait(), 10)
        assert await bot.memory.rows.summary(chat.dm.id) is None
        assert await bot.memory.rows.facts(chat.alice.id, 0) == []
        await ask(chat, bot, chat.dm, chat.alice, "what do I like")
        assert "Python" not in system_of(replies()[-1])


async def test_memory_expires_after_memory_days(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    now = [1_000_000.0]
    async with run_bot(bot := make_bot(backend, tmp_path, memory_days=2), chat.server):
        bot.memory.clock = lambda: now[0]
        await overflow(chat, bot)
        now[0] += 2 * DAY
        await ask(chat, bot, chat.dm, chat.alice, "still there")
        assert "I prefer Python" in system_of(replies()[-1])
        await settle(bot)
        now[0] += 2 * DAY + 1  # past memory_days since the last summary and the fact
        await ask(chat, bot, chat.dm, chat.alice, "gone now")
        system = system_of(replies()[-1])
        assert "I prefer Python" not in system and "summary:" not in system
        await settle(bot)
        assert await bot.memory.rows.facts(chat.alice.id, 0) == []
        # a summary made since is new (the messages are still in the channel to be read)
        summary = await bot.memory.rows.summary(chat.dm.id)
        assert summary is None or summary.created == now[0]


# -- /memory --------------------------------------------------------------------------------------


class Guild:
    def __init__(self, server: DiscordServer) -> None:
        self.server = server
        guild = server.create_guild("Guild")
        self.alice = server.create_user("alice")
        self.bob = server.create_user("bob")
        self.admin = server.create_user("admin")
        self.eve = server.create_user("eve")
        for user in (self.alice, self.bob, self.admin, self.eve):
            server.add_member(guild, user)
        self.general = server.create_channel(guild, "general")
        self.dm = server.create_dm(self.alice)

    async def memory(self, user: FakeUser, where: FakeChannel | None = None, **options: Any) -> str:
        interaction = await self.server.invoke_command(
            where or self.general, user, "memory", options
        )
        response = await interaction.wait_response()
        assert response["ephemeral"]
        return str(response["content"])


async def test_memory_shows_and_forgets_only_your_own_facts(
    backend: Streamer, tmp_path: Path
) -> None:
    async with DiscordServer() as server:
        w = Guild(server)
        bot = make_bot(backend, tmp_path, admins=[w.admin.id])
        async with run_bot(bot, server):
            assert "nothing" in await w.memory(w.alice)
            assert "tea" in await w.memory(w.alice, remember="I like tea")
            await w.memory(w.alice, remember="I live in Oslo")
            await w.memory(w.bob, remember="I like coffee")
            await w.memory(w.alice, w.dm, remember="my DM secret")
            shown = await w.memory(w.alice)
            assert shown.endswith("1. I like tea\n2. I live in Oslo")
            assert "coffee" not in shown and "DM secret" not in shown
            assert "DM secret" in await w.memory(w.alice, w.dm)
            assert "Say `all`" in await w.memory(w.alice, forget="3")
            assert "Forgot 1" in await w.memory(w.alice, forget="1")
            assert (await w.memory(w.alice)).endswith("1. I live in Oslo")
            assert "Forgot 1" in await w.memory(w.bob, forget="all")  # bob's, not alice's
            assert "Oslo" in await w.memory(w.alice)
            assert "Forgot 1" in await w.memory(w.alice, forget="all")
            assert "nothing" in await w.memory(w.alice)
            assert "DM secret" in await w.memory(w.alice, w.dm)  # another place


async def test_admins_clear_a_channels_summary(backend: Streamer, tmp_path: Path) -> None:
    async with DiscordServer() as server:
        w = Guild(server)
        bot = make_bot(backend, tmp_path, admins=[w.admin.id])
        async with run_bot(bot, server):
            await bot.memory.rows.put_summary(
                w.general.id, "we talked of tea", [1], bot.memory.clock()
            )
            assert "we talked of tea" in await w.memory(w.alice)
            assert "Only the bot's admins" in await w.memory(w.alice, channel=True)
            assert await bot.memory.rows.summary(w.general.id) is not None
            assert "Forgot this channel" in await w.memory(w.admin, channel=True)
            assert await bot.memory.rows.summary(w.general.id) is None
            assert "no summary" in await w.memory(w.admin, channel=True)


async def test_memory_is_refused_when_off_or_not_allowed(backend: Streamer, tmp_path: Path) -> None:
    async with DiscordServer() as server:
        w = Guild(server)
        bot = make_bot(backend, tmp_path, users={"blacklist": [w.eve.id]}, memory=False)
        async with run_bot(bot, server):
            assert "no memory" in await w.memory(w.alice, remember="x")
            assert "may not chat" in await w.memory(w.eve, remember="x")
            assert await bot.memory.rows.rows() == []


# -- a blacklisted user's text is never stored --------------------------------------------------

_turns = st.lists(
    st.tuples(st.sampled_from(["alice", "eve"]), st.sampled_from(["say", "remember", "command"])),
    min_size=2,
    max_size=8,
).filter(lambda turns: sum(who == "alice" and how != "command" for who, how in turns) >= 2)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(turns=_turns)
def test_a_blacklisted_users_text_is_never_stored(
    turns: list[tuple[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Alice and eve (blacklisted) talk to the bot in one channel, in any order, saying things,
    asking it to remember things (by message and by /memory): whatever reaches the summariser
    and whatever is stored holds alice's words, never eve's."""
    REQUESTS.clear()
    recorder.start_thread(maximum=1)
    try:
        asyncio.run(_blacklisted(turns, tmp_path_factory.mktemp("memory")))
    finally:
        recorder.close()


async def _blacklisted(turns: list[tuple[str, str]], data_dir: Path) -> None:
    async with DiscordServer() as server:
        w = Guild(server)
        bot = make_bot(recorder, data_dir, users={"blacklist": [w.eve.id]}, context_chars=50)
        async with run_bot(bot, server):
            assert bot.user is not None
            for i, (who, how) in enumerate(turns):
                user = w.alice if who == "alice" else w.eve
                words = f"{who.upper()}-WORDS-{i}"
                if how == "command":
                    await w.memory(user, remember=words)
                    continue
                text = f"remember that {words}" if how == "remember" else words
                await server.send_message(w.general, user, f"<@{bot.user.id}> {text}")
                if who == "alice":
                    await server.wait_for(
                        lambda text=text: any(
                            m["content"] == f"answer: {text}"
                            for m in server.bot_messages(w.general)
                        ),
                        timeout=15,
                    )
                await settle(bot)
            stored = await bot.memory.rows.rows()
    seen = [m["content"] for r in REQUESTS for m in r.messages]
    assert not any("EVE-WORDS" in text for text in stored + seen)
    assert any("ALICE-WORDS" in text for text in stored)  # something was stored at all


# -- the token budget ------------------------------------------------------------------------------


async def test_context_tokens_trims_by_the_backends_count(
    chat: Chat, backend: Streamer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``context_tokens`` the backend's counts decide what fits (here: ten tokens a word),
    and ``context_chars`` (one character: it would leave a stub) does not apply."""
    counted: list[list[str]] = []

    async def ten_a_word(texts: list[str]) -> list[int]:
        counted.append(texts)
        return [10 * len(text.split()) for text in texts]

    monkeypatch.setattr(backend, "count_texts", ten_a_word, raising=False)
    bot = make_bot(backend, tmp_path, memory=False, context_tokens=30, context_chars=1)
    async with run_bot(bot, chat.server):
        await ask(chat, bot, chat.dm, chat.alice, "one")
        await ask(chat, bot, chat.dm, chat.alice, "two")
    assert replies()[-1].messages[1:] == [{"role": "user", "content": "alice: two"}]
    assert counted[-1] == ["alice: two", "answer: one", "alice: one"]  # newest first
