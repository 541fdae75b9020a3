"""Ways to converse, end to end on the loopback Discord with a real (scripted) Streamer:
``reply_mode = "thread"``, ``context_mode = "reply_chain"`` and re-answering an edited
question (``reanswer_window``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from chat_workers import SEEN, recording, said_in, threaded
from chat_world import Group, chat_bot, scene, settle, texts
from genbot.chatbot import ChatBot
from genbot.output import split_message
from genbot.streaming import Stream, Streamer
from genbot.testing import DiscordServer, FakeUser, run_bot

HISTORY = ("GET", "/channels/{channel_id}/messages")
ONE_MESSAGE = ("GET", "/channels/{channel_id}/messages/{message_id}")
THREAD_FROM_MESSAGE = ("POST", "/channels/{channel_id}/messages/{message_id}/threads")
CREATE_PUBLIC_THREADS = 1 << 35
LONG = "y" * 2500  # more than one Discord message


def _answer(stream: Stream, said: str) -> None:
    stream.write(LONG if said == "long" else f"answer: {said}")


#: Answers ``answer: <what was said last>`` (``long``: a reply of several messages) and
#: records what it was asked (in ``SEEN``).
recorder = recording(_answer)


@pytest.fixture
def backend() -> Iterator[Streamer]:
    yield from threaded(recorder, 4)


class World(Group):
    def __init__(self, server: DiscordServer) -> None:
        super().__init__(server)
        self.eve: FakeUser = self.member("eve")


world = pytest.fixture(scene(World), name="world")


def make_bot(backend: Streamer, **values: Any) -> ChatBot:
    return chat_bot(backend, {"queue_timeout": 10.0, **values})


def split(text: str) -> str:
    """`text` as the bot's messages show it, joined by newlines by :func:`texts`."""
    return "\n".join(split_message(text))


def requests(server: DiscordServer, *routes: tuple[str, str]) -> int:
    return sum(server.request_count(method, route) for method, route in routes)


async def ask(world: World, channel: Any, author: FakeUser, text: str, **kw: Any) -> dict[str, Any]:
    """`author` says `text` and the bot's answer to it shows (``answer: <text>``)."""
    message = await world.server.send_message(channel, author, text, **kw)
    await world.wait_for_reply(channel, f"answer: {text}")
    return message


# -- reply_mode = "thread" -----------------------------------------------------------------------


async def test_thread_mode_opens_a_thread_from_the_question_and_goes_on_there(
    world: World, backend: Streamer
) -> None:
    server = world.server
    bot = make_bot(backend, reply_mode="thread")
    async with run_bot(bot, server):
        question = await server.send_message(
            world.general, world.alice, "what is a thread", mentions_bot=True
        )
        thread = await world.opened(question)
        assert thread.parent_id == world.general.id
        await world.wait_for_reply(thread, "answer: what is a thread")
        # a message in the bot's thread wakes it without a mention; the question is context
        await server.send_message(thread, world.alice, "and then")
        await world.wait_for_reply(thread, "answer: and then")
        await settle(bot)
    assert world.replies(world.general) == []  # nothing in the channel itself
    assert server.request_count(*THREAD_FROM_MESSAGE) == 1
    first, follow_up = SEEN
    assert "what is a thread" in texts(first)
    assert "what is a thread" in texts(follow_up) and "answer: what is a thread" in texts(follow_up)


async def test_thread_mode_answers_in_place_when_the_thread_cannot_be_opened(
    world: World, backend: Streamer, caplog: pytest.LogCaptureFixture
) -> None:
    server = world.server
    server.set_overwrite(world.general, server.bot_user, deny=CREATE_PUBLIC_THREADS)
    bot = make_bot(backend, reply_mode="thread")
    caplog.set_level(logging.WARNING, logger="genbot.modes")
    async with run_bot(bot, server):
        question = await ask(
            world, world.general, world.alice, "no threads here", mentions_bot=True
        )
        await settle(bot)
    (reply,) = server.bot_messages(world.general)
    assert reply["message_reference"]["message_id"] == question["id"]
    assert server.request_count(*THREAD_FROM_MESSAGE) == 1
    assert "could not open a thread" in caplog.text


async def test_a_note_about_the_question_shows_in_its_thread(
    world: World, backend: Streamer
) -> None:
    """A question over the rate limit still goes to a thread, where the notice shows."""
    server = world.server
    bot = make_bot(backend, reply_mode="thread", user_rate="1/day")
    async with run_bot(bot, server):
        first = await server.send_message(world.general, world.alice, "first", mentions_bot=True)
        await world.wait_for_reply(await world.opened(first), "answer: first")
        second = await server.send_message(world.general, world.alice, "again", mentions_bot=True)
        thread = await world.opened(second)
        await server.wait_for(lambda: len(server.bot_messages(thread)) == 2, timeout=15)
        await settle(bot)
    (note,) = [m for m in server.bot_messages(thread) if m["type"] != 21]
    assert note["content"].startswith("*") and "message_reference" not in note
    assert len(SEEN) == 1


async def test_thread_mode_answers_in_place_in_a_dm(world: World, backend: Streamer) -> None:
    server = world.server
    bot = make_bot(backend, reply_mode="thread")
    async with run_bot(bot, server):
        question = await ask(world, world.dm, world.alice, "hello")
        await settle(bot)
    (reply,) = server.bot_messages(world.dm)
    assert reply["message_reference"]["message_id"] == question["id"]
    assert server.request_count(*THREAD_FROM_MESSAGE) == 0


# -- context_mode = "reply_chain" ----------------------------------------------------------------


async def test_a_reply_chain_leaves_out_the_channel_and_costs_no_rest_request_when_warm(
    world: World, backend: Streamer
) -> None:
    server = world.server
    bot = make_bot(backend, context_mode="reply_chain")
    async with run_bot(bot, server):
        await ask(world, world.general, world.alice, "one", mentions_bot=True)
        answer_one = server.bot_messages(world.general)[-1]
        await server.send_message(world.general, world.bob, "chatter")
        await ask(world, world.general, world.alice, "two", mentions_bot=True)
        before = requests(server, HISTORY, ONE_MESSAGE)
        await ask(world, world.general, world.alice, "branch", reply_to=answer_one)
        after = requests(server, HISTORY, ONE_MESSAGE)
        await settle(bot)
    seen = texts(SEEN[-1])
    assert "one" in seen and "answer: one" in seen and "branch" in seen
    assert "chatter" not in seen and "two" not in seen
    assert after == before  # the warm chain came from the cache


async def test_a_cold_reply_chain_is_read_by_fetching(world: World, backend: Streamer) -> None:
    server = world.server
    bot = make_bot(backend, context_mode="reply_chain")
    async with run_bot(bot, server):
        await ask(world, world.general, world.alice, "one", mentions_bot=True)
        answer_one = server.bot_messages(world.general)[-1]
        await ask(world, world.general, world.bob, "two", mentions_bot=True)
        bot.message_cache.invalidate()  # as a new gateway session does
        before = server.request_count(*HISTORY)
        await ask(world, world.general, world.alice, "cold", reply_to=answer_one)
        fetched = server.request_count(*HISTORY) - before
        await settle(bot)
    seen = texts(SEEN[-1])
    assert "answer: one" in seen and "cold" in seen and "two" not in seen
    assert fetched >= 1


async def test_with_reply_chains_chatter_after_a_question_is_not_taken_for_one(
    world: World, backend: Streamer
) -> None:
    """A chain holds only its question: the bot answers the message that woke it, not the
    newest message (as history mode does when someone wrote while it answered)."""
    server = world.server
    bot = make_bot(backend, context_mode="reply_chain")
    async with run_bot(bot, server):
        await ask(world, world.general, world.alice, "one", mentions_bot=True)
        seen = asyncio.ensure_future(
            bot.wait_for("message", check=lambda m: m.content == "chatter", timeout=5)
        )
        await server.send_message(world.general, world.bob, "chatter")
        await seen
        bot.attend.force(bot.get_channel(world.general.id))  # as a follow-up attend would
        await settle(bot)
        await ask(world, world.general, world.alice, "two", mentions_bot=True)
        await settle(bot)
    assert world.replies(world.general) == ["answer: one", "answer: two"]


async def test_a_blacklisted_users_message_in_a_chain_never_reaches_the_model(
    world: World, backend: Streamer
) -> None:
    server = world.server
    bot = make_bot(backend, context_mode="reply_chain", users={"blacklist": [world.eve.id]})
    async with run_bot(bot, server):
        await ask(world, world.general, world.alice, "one", mentions_bot=True)
        answer_one = server.bot_messages(world.general)[-1]
        secret = await server.send_message(
            world.general, world.eve, "the secret", reply_to=answer_one, mentions_bot=True
        )
        await ask(world, world.general, world.alice, "what now", reply_to=secret, mentions_bot=True)
        await settle(bot)
    assert len(SEEN) == 2  # eve was not answered
    seen = texts(SEEN[-1])
    assert "secret" not in seen
    assert "answer: one" in seen and "what now" in seen  # the chain went on through her message


async def test_a_reply_chain_keeps_the_ignore_prefix_and_stops_at_a_reset(
    world: World, backend: Streamer
) -> None:
    server = world.server
    bot = make_bot(backend, context_mode="reply_chain")
    async with run_bot(bot, server):
        await ask(world, world.general, world.alice, "one", mentions_bot=True)
        answer_one = server.bot_messages(world.general)[-1]
        aside = await server.send_message(world.general, world.bob, "! aside", reply_to=answer_one)
        await ask(world, world.general, world.alice, "after", reply_to=aside, mentions_bot=True)
        before_reset = texts(SEEN[-1])
        reset = await server.invoke_command(world.general, world.alice, "reset")
        await reset.wait_response()
        await ask(world, world.general, world.alice, "fresh", reply_to=answer_one)
        await settle(bot)
    assert "answer: one" in before_reset and "aside" not in before_reset
    assert "one" not in texts(SEEN[-1]) and "fresh" in texts(SEEN[-1])


# -- re-answering an edited question -------------------------------------------------------------


async def test_an_edited_question_is_answered_again_in_place(
    world: World, backend: Streamer
) -> None:
    server = world.server
    bot = make_bot(backend)
    async with run_bot(bot, server):
        question = await server.send_message(world.dm, world.alice, "long")
        await server.wait_for(
            lambda: texts(server.bot_messages(world.dm)) == split(LONG), timeout=15
        )
        first, _ = server.bot_messages(world.dm)
        await server.edit_message(world.dm, question["id"], "short")
        await world.wait_for_reply(world.dm, "answer: short")
        await server.wait_for(lambda: len(server.bot_messages(world.dm)) == 1, timeout=15)
        await settle(bot)
    (reply,) = server.bot_messages(world.dm)
    assert reply["id"] == first["id"]  # the same message, its text replaced
    assert reply["message_reference"]["message_id"] == question["id"]
    assert len(SEEN) == 2 and said_in(SEEN[-1]) == "short"


async def test_a_longer_new_answer_continues_in_new_messages(
    world: World, backend: Streamer
) -> None:
    server = world.server
    bot = make_bot(backend)
    async with run_bot(bot, server):
        question = await ask(world, world.general, world.alice, "short", mentions_bot=True)
        (old,) = server.bot_messages(world.general)
        await server.edit_message(world.general, question["id"], f"<@{server.bot_user.id}> long")
        await server.wait_for(lambda: len(server.bot_messages(world.general)) == 2, timeout=15)
        await server.wait_for(
            lambda: texts(server.bot_messages(world.general)) == split(LONG), timeout=15
        )
        await settle(bot)
    first, second = server.bot_messages(world.general)
    assert first["id"] == old["id"] and second["id"] != old["id"]


async def test_updates_that_are_no_edit_of_the_latest_question_are_not_answered_again(
    world: World, backend: Streamer, caplog: pytest.LogCaptureFixture
) -> None:
    server = world.server
    caplog.set_level(logging.INFO, logger="genbot.chatbot")
    bot = make_bot(backend, reanswer_window=0.001)  # any edit is later than that
    async with run_bot(bot, server):
        late = await ask(world, world.dm, world.alice, "late")
        await server.edit_message(world.dm, late["id"], "late edit")
        await ask(world, world.dm, world.alice, "next")
        await server.unfurl(world.dm, late["id"], [{"title": "a preview"}])
        await settle(bot)
    bot = make_bot(backend)  # the default window
    async with run_bot(bot, server):
        older = await ask(world, world.dm, world.alice, "older")
        await ask(world, world.dm, world.alice, "newest")
        await server.edit_message(world.dm, older["id"], "older edit")  # not the latest
        await server.unfurl(world.dm, server.messages(world.dm)[-2]["id"], [{"title": "p"}])
        await ask(world, world.dm, world.alice, "sentinel")
        await settle(bot)
    assert "answering an edited question again" not in caplog.text
    assert [said_in(seen) for seen in SEEN] == ["late", "next", "older", "newest", "sentinel"]
    assert "answer: late" in world.replies(world.dm)
