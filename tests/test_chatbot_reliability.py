"""The ready-made chat bot under failure: every question gets a visible outcome, hung models
are bounded, and messages that arrive while a reply fails are answered. Real Streamers with
scripted workers (tests/chat_workers.py) on the loopback Discord, tiny timeouts via Settings."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from chat_workers import RELEASE, mortal, one_slot, scripted
from chat_world import Chat, chat_bot, scene, settle
from genbot.chatbot import ChatBot
from genbot.output import DEFAULT_EMPTY_TEXT, DEFAULT_ERROR_TEXT, DEFAULT_STALL_TEXT
from genbot.streaming import Streamer
from genbot.testing import run_bot

ERROR_NOTE = f"*{DEFAULT_ERROR_TEXT}*"
STALL_NOTE = f"*{DEFAULT_STALL_TEXT}*"
QUEUED_NOTE = f"*{ChatBot.queued_text}*"
BUSY_NOTE = f"*{ChatBot.busy_text}*"


chat = pytest.fixture(scene(Chat), name="chat")


backend = pytest.fixture(one_slot, name="backend")


def make_bot(backend: Streamer, **values: Any) -> ChatBot:
    """The bot with its queued note after 0.2 s; ``queue_timeout`` stays long (30 s) unless a
    test of the busy note names a short one: a chat queued behind a stalled reply waits until
    the test sees the stall note and releases the worker, which a loaded machine can make
    take more than a second or two."""
    return chat_bot(backend, values, queued_after=0.2)


async def say_while_generating(bot: ChatBot, chat: Chat, text: str) -> dict[str, Any]:
    """Alice writes `text` in the DM once the first reply shows, and the bot has seen it."""
    await chat.server.wait_for(
        lambda: any(r.startswith("Let me think") for r in chat.replies(chat.dm)), timeout=15
    )
    seen = asyncio.ensure_future(
        bot.wait_for("message", check=lambda m: m.content == text, timeout=5)
    )
    message = await chat.server.send_message(chat.dm, chat.alice, text)
    await seen
    return message


# --- no question goes unanswered ----------------------------------------------------------------


@pytest.mark.parametrize(("how", "note"), [("fail", ERROR_NOTE), ("stall", STALL_NOTE)])
async def test_a_message_that_arrives_while_a_reply_fails_gets_its_answer(
    chat: Chat, backend: Streamer, how: str, note: str
) -> None:
    server = chat.server
    bot = make_bot(backend, stall_timeout=1.0 if how == "stall" else 30.0)
    async with run_bot(bot, server):
        first = await server.send_message(chat.dm, chat.alice, how)
        second = await say_while_generating(bot, chat, "second")
        if how == "stall":  # the worker keeps the only slot until the stall note shows
            await chat.wait_for_reply(chat.dm, f"Let me think\n\n{note}")
        RELEASE.set()
        await chat.wait_for_reply(chat.dm, "answer: second")
        await settle(bot)
    failed, answered = server.bot_messages(chat.dm)
    assert failed["content"] == f"Let me think\n\n{note}"
    assert failed["message_reference"]["message_id"] == first["id"]
    assert answered["message_reference"]["message_id"] == second["id"]


async def test_a_backend_that_always_fails_answers_each_question_once(
    chat: Chat, backend: Streamer
) -> None:
    """The follow-up answers only what is newer than what was answered: no loop."""
    server = chat.server
    bot = make_bot(backend)
    async with run_bot(bot, server):
        first = await server.send_message(chat.dm, chat.alice, "fail 1")
        second = await say_while_generating(bot, chat, "fail 2")
        RELEASE.set()
        await server.wait_for(lambda: len(server.bot_messages(chat.dm)) == 2, timeout=15)
        await settle(bot)
        replies = server.bot_messages(chat.dm)
    assert [m["content"] for m in replies] == [f"Let me think\n\n{ERROR_NOTE}"] * 2
    assert [m["message_reference"]["message_id"] for m in replies] == [first["id"], second["id"]]


async def test_a_message_that_arrives_while_the_worker_is_killed_gets_its_answer(
    chat: Chat, tmp_path: Path
) -> None:
    server = chat.server
    mortal.start_process(maximum=1)
    try:
        bot = make_bot(mortal, queue_timeout=60.0)
        async with run_bot(bot, server, timeout=60):
            await server.send_message(chat.dm, chat.alice, f"die {tmp_path / 'go'}")
            second = await say_while_generating(bot, chat, "second")
            (tmp_path / "go").touch()  # the worker kills itself now
            await chat.wait_for_reply(chat.dm, "answer: second", timeout=60)
            await settle(bot)
    finally:
        mortal.close()
    failed, answered = server.bot_messages(chat.dm)
    assert failed["content"] == f"Let me think\n\n{ERROR_NOTE}"
    assert answered["message_reference"]["message_id"] == second["id"]


# --- hung models are bounded ------------------------------------------------------------------


async def test_a_hung_worker_ends_its_reply_and_tells_other_chats_it_is_busy(
    chat: Chat, backend: Streamer
) -> None:
    server = chat.server
    bot = make_bot(backend, stall_timeout=1.0, queue_timeout=1.5)
    async with run_bot(bot, server):
        await server.send_message(chat.general, chat.alice, "hang", mentions_bot=True)
        await chat.wait_for_reply(chat.general, STALL_NOTE)  # no text at all: only the note
        # The worker still hangs and holds the only slot: the next chat waits, and is told.
        hello = await server.send_message(chat.dm, chat.alice, "hello")
        await chat.wait_for_reply(chat.dm, BUSY_NOTE)
        await settle(bot)
        (busy,) = server.bot_messages(chat.dm)
        assert busy["message_reference"]["message_id"] == hello["id"]
        assert busy["edited_timestamp"] is not None, "the queued note became the busy note"
        assert server.typing_events(chat.dm), "typing shows while the chat waits for a slot"
        RELEASE.set()  # the model recovers: the next question is answered
        await server.send_message(chat.dm, chat.alice, "again")
        await chat.wait_for_reply(chat.dm, "answer: again")
        await settle(bot)


async def test_a_queued_chat_sees_a_note_that_becomes_its_reply(
    chat: Chat, backend: Streamer
) -> None:
    server = chat.server
    bot = make_bot(backend, queue_timeout=30.0)
    async with run_bot(bot, server):
        await server.send_message(chat.general, chat.alice, "hold", mentions_bot=True)
        await chat.wait_for_reply(chat.general, "Let me think")
        hello = await server.send_message(chat.dm, chat.alice, "hello")
        await chat.wait_for_reply(chat.dm, QUEUED_NOTE)
        (queued,) = server.bot_messages(chat.dm)
        RELEASE.set()
        await chat.wait_for_reply(chat.general, "Let me think done.")
        await chat.wait_for_reply(chat.dm, "answer: hello")
        await settle(bot)
    (reply,) = server.bot_messages(chat.dm)
    assert reply["id"] == queued["id"]
    assert reply["message_reference"]["message_id"] == hello["id"]


async def test_a_queued_note_for_a_question_overtaken_by_a_newer_one_is_removed(
    chat: Chat, backend: Streamer
) -> None:
    server = chat.server
    bot = make_bot(backend, queue_timeout=30.0)
    async with run_bot(bot, server):
        await server.send_message(chat.general, chat.alice, "hold", mentions_bot=True)
        await chat.wait_for_reply(chat.general, "Let me think")
        await server.send_message(chat.dm, chat.alice, "hello")
        await chat.wait_for_reply(chat.dm, QUEUED_NOTE)
        newer = await server.send_message(chat.dm, chat.alice, "are you there?")
        RELEASE.set()
        await chat.wait_for_reply(chat.dm, "answer: are you there?")
        await settle(bot)
    (reply,) = server.bot_messages(chat.dm)
    assert reply["message_reference"]["message_id"] == newer["id"]


# --- every reply has a visible outcome -----------------------------------------------------------


async def test_an_invisible_model_output_gets_a_visible_note(chat: Chat, backend: Streamer) -> None:
    server = chat.server
    bot = make_bot(backend)
    async with run_bot(bot, server):
        question = await server.send_message(chat.dm, chat.alice, "empty")
        await chat.wait_for_reply(chat.dm, f"*{DEFAULT_EMPTY_TEXT}*")
        await settle(bot)
    (reply,) = server.bot_messages(chat.dm)
    assert reply["message_reference"]["message_id"] == question["id"]


async def test_a_backend_that_is_gone_gets_a_visible_note(chat: Chat, backend: Streamer) -> None:
    server = chat.server
    bot = make_bot(backend)
    async with run_bot(bot, server):
        backend.close()  # say, the operator's backend crashed for good
        question = await server.send_message(chat.dm, chat.alice, "hello?")
        await chat.wait_for_reply(chat.dm, f"*{ChatBot.unavailable_text}*")
        await settle(bot)
    (reply,) = server.bot_messages(chat.dm)
    assert reply["message_reference"]["message_id"] == question["id"]


async def test_a_turn_lost_before_the_inputs_are_sent_gets_a_visible_note(chat: Chat) -> None:
    """The slot is granted, then reading the context takes longer than the backend's
    input_timeout (a slow history fetch, a 429): the turn is gone and the user is told so."""
    server = chat.server
    RELEASE.clear()
    scripted.start_thread(maximum=1, input_timeout=0.1)
    try:
        bot = make_bot(scripted)
        reads = 0
        question_of = bot._question

        async def slow_second_read(*args: Any) -> Any:  # the read after the slot was granted
            nonlocal reads
            reads += 1
            if reads == 2:
                await asyncio.sleep(3.0)  # far past input_timeout: the worker drops the turn
            return await question_of(*args)

        bot._question = slow_second_read  # type: ignore[method-assign]
        async with run_bot(bot, server):
            question = await server.send_message(chat.dm, chat.alice, "hello?")
            await chat.wait_for_reply(chat.dm, f"*{ChatBot.unavailable_text}*")
            await settle(bot)
    finally:
        RELEASE.set()
        scripted.close()
    (reply,) = server.bot_messages(chat.dm)
    assert reply["message_reference"]["message_id"] == question["id"]
