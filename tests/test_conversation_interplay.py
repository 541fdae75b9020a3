"""Where the conversation features meet, end to end on the loopback Discord with a real
(scripted) Streamer: Regenerate with reply chains, reasoning, attachments and threads; the
buttons with re-answered edits and settings reloads."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from chat_workers import RELEASE, SEEN, hold_until_closed, recording, threaded
from chat_world import Group, chat_bot, scene, settle, texts
from genbot.chatbot import ChatBot
from genbot.controls import REGENERATE, STOP, Control, Controls
from genbot.streaming import Stream, Streamer
from genbot.testing import DiscordServer, FakeChannel, FakeUser, run_bot
from genbot.testing.models import Upload

CREATE_PUBLIC_THREADS = 1 << 35


def _answer(stream: Stream, said: str) -> None:
    if said == "think":
        stream.write("<think>a secret plan</think>The answer.")
    elif said == "long":  # two Discord messages
        stream.write("y" * 2500)
    elif said == "hold":  # until the caller closes the stream (Stop)
        hold_until_closed(stream)
    else:
        stream.write(f"answer (seed {stream.data.settings.seed}): {said}")


#: Records what it was asked (in ``SEEN``); answers ``think``: a ``<think>`` block, then
#: ``The answer.``; anything else: ``answer (seed S): <what was said last>``.
recorder = recording(_answer)


@pytest.fixture
def backend() -> Iterator[Streamer]:
    yield from threaded(recorder, 4)


World = Group


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the usage store (data_dir) in a place of its own


world = pytest.fixture(scene(World), name="world")


def make_bot(backend: Streamer, **values: Any) -> ChatBot:
    return chat_bot(backend, {"queue_timeout": 10.0, **values})


async def reply_to(
    server: DiscordServer, channel: FakeChannel, question: dict[str, Any], buttons: list[str]
) -> dict[str, Any]:
    """The bot's reply to `question` in `channel` (a reply, or in a thread the first message of
    the bot), once it shows `buttons`; a copy."""

    def find() -> dict[str, Any] | None:
        for message in server.bot_messages(channel):
            if message["type"] == 21:  # a thread's starter message
                continue
            reference = message.get("message_reference") or {}
            if reference.get("message_id") in (question["id"], None):
                return message
        return None

    await server.wait_for(
        lambda: (m := find()) is not None and server.buttons(channel, m["id"]) == buttons,
        timeout=15,
    )
    found = find()
    assert found is not None
    return dict(found)


async def regenerate(
    server: DiscordServer,
    channel: FakeChannel,
    reply: dict[str, Any],
    question: dict[str, Any],
    asker: FakeUser,
) -> dict[str, Any]:
    """Press Regenerate on `reply`; the reply once its text changed and it shows Regenerate."""
    seen = len(SEEN)
    custom_id = Control(REGENERATE, int(question["id"]), asker.id).custom_id
    await server.press(channel, reply["id"], custom_id, asker)
    await server.wait_for(
        lambda: (
            len(SEEN) > seen
            and server.message(channel, reply["id"])["content"] != reply["content"]
            and server.buttons(channel, reply["id"]) == ["Regenerate"]
        ),
        timeout=15,
    )
    return dict(server.message(channel, reply["id"]))


# -- Regenerate sees what the reply saw ----------------------------------------------------------


async def test_regenerate_with_reply_chains_sees_the_chain_not_the_channel(
    world: World, backend: Streamer
) -> None:
    server = world.server
    bot = make_bot(backend, context_mode="reply_chain")
    async with run_bot(bot, server):
        one = await server.send_message(world.general, world.alice, "one", mentions_bot=True)
        answer_one = await reply_to(server, world.general, one, ["Regenerate"])
        await server.send_message(world.general, world.bob, "chatter")
        branch = await server.send_message(
            world.general, world.alice, "branch", reply_to=answer_one
        )
        reply = await reply_to(server, world.general, branch, ["Regenerate"])
        first = texts(SEEN[-1])
        again = await regenerate(server, world.general, reply, branch, world.alice)
        await settle(bot)
    assert "chatter" not in first
    assert again["content"].endswith("): branch")
    regenerated = texts(SEEN[-1])
    assert "chatter" not in regenerated
    assert "one" in regenerated and "branch" in regenerated


async def test_a_regenerated_reply_never_shows_the_models_reasoning(
    world: World, backend: Streamer
) -> None:
    server = world.server
    bot = make_bot(backend)
    async with run_bot(bot, server):
        question = await server.send_message(world.general, world.alice, "think", mentions_bot=True)
        reply = await reply_to(server, world.general, question, ["Regenerate"])
        assert reply["content"] == "The answer."
        server.update_message(world.general, int(reply["id"]), {"content": "(edited away)"})
        reply["content"] = "(edited away)"
        again = await regenerate(server, world.general, reply, question, world.alice)
        await settle(bot)
    assert again["content"] == "The answer."


async def test_regenerate_sees_the_questions_text_attachment(
    world: World, backend: Streamer
) -> None:
    server = world.server
    bot = make_bot(backend)
    async with run_bot(bot, server):
        attachment = server.state.store_file(
            world.dm, Upload(0, "notes.txt", "text/plain", b"the word is kumquat"), "notes.txt"
        )
        question = server.create_message(
            world.dm, world.alice, {"content": "read it"}, attachments=[attachment]
        )
        await server.dispatch_message("MESSAGE_CREATE", question)
        reply = await reply_to(server, world.dm, question, ["Regenerate"])
        await regenerate(server, world.dm, reply, question, world.alice)
        await settle(bot)
    first, regenerated = SEEN
    assert "kumquat" in texts(first)
    assert "kumquat" in texts(regenerated)


async def test_regenerate_in_a_thread_mode_thread(world: World, backend: Streamer) -> None:
    server = world.server
    bot = make_bot(backend, reply_mode="thread")
    async with run_bot(bot, server):
        question = await server.send_message(
            world.general, world.alice, "a thread please", mentions_bot=True
        )
        thread = await world.opened(question)
        reply = await reply_to(server, thread, question, ["Regenerate"])
        again = await regenerate(server, thread, reply, question, world.alice)
        await settle(bot)
    assert again["content"].endswith("): a thread please")
    assert "a thread please" in texts(SEEN[-1])
    assert [m["id"] for m in server.bot_messages(thread) if m["type"] != 21] == [reply["id"]]


async def test_stop_in_a_thread_mode_thread(world: World, backend: Streamer) -> None:
    server = world.server
    bot = make_bot(backend, reply_mode="thread")
    async with run_bot(bot, server):
        question = await server.send_message(world.general, world.alice, "hold", mentions_bot=True)
        thread = await world.opened(question)
        reply = await reply_to(server, thread, question, ["Stop"])
        stop = Control(STOP, int(question["id"]), world.alice.id).custom_id
        await server.press(thread, reply["id"], stop, world.alice)
        stopped = await reply_to(server, thread, question, ["Regenerate"])
        await settle(bot)
    assert stopped["content"] == "Let me think\n\n*Stopped.*"


# -- the buttons of a re-answered edit, and after a reload ----------------------------------------


async def test_an_edited_questions_new_answer_keeps_working_buttons(
    world: World, backend: Streamer
) -> None:
    server = world.server
    bot = make_bot(backend)
    async with run_bot(bot, server):
        question = await server.send_message(world.dm, world.alice, "one")
        first = await reply_to(server, world.dm, question, ["Regenerate"])
        await server.edit_message(world.dm, question["id"], "two")
        await server.wait_for(
            lambda: server.message(world.dm, first["id"])["content"].endswith(": two"), timeout=15
        )
        await settle(bot)
        await asyncio.gather(*bot.controls._tasks)  # the older replies' buttons are removed
        reply = await reply_to(server, world.dm, question, ["Regenerate"])
        again = await regenerate(server, world.dm, reply, question, world.alice)
        await settle(bot)
    assert again["id"] == first["id"] and again["content"].endswith(": two")
    assert [m["id"] for m in server.bot_messages(world.dm)] == [first["id"]]


async def test_turning_buttons_off_removes_them_from_the_last_reply_at_the_next(
    world: World, backend: Streamer
) -> None:
    server = world.server
    bot = make_bot(backend)
    async with run_bot(bot, server):
        one = await server.send_message(world.dm, world.alice, "one")
        first = await reply_to(server, world.dm, one, ["Regenerate"])
        await bot.reconfigure(dataclasses.replace(bot.settings, buttons=False))
        two = await server.send_message(world.dm, world.alice, "two")
        await reply_to(server, world.dm, two, [])
        await server.wait_for(lambda: server.buttons(world.dm, first["id"]) == [], timeout=15)
        await settle(bot)


async def test_an_edited_question_in_thread_mode_is_answered_again_in_its_thread(
    world: World, backend: Streamer
) -> None:
    server = world.server
    bot = make_bot(backend, reply_mode="thread")
    async with run_bot(bot, server):
        question = await server.send_message(
            world.general, world.alice, "first try", mentions_bot=True
        )
        thread = await world.opened(question)
        first = await reply_to(server, thread, question, ["Regenerate"])
        await server.edit_message(world.general, question["id"], "second try")
        await server.wait_for(
            lambda: server.message(thread, first["id"])["content"].endswith(": second try"),
            timeout=15,
        )
        await settle(bot)
    assert [m["id"] for m in server.bot_messages(thread) if m["type"] != 21] == [first["id"]]
    assert world.replies(world.general) == []


async def test_a_regeneration_counts_as_attending_so_shutdown_waits_for_it(
    world: World, backend: Streamer
) -> None:
    """A regeneration runs in the press's task: the bot waits for it (bounded) when it shuts
    down, as for a reply, so the reply is finished and its tokens are counted."""
    server = world.server
    bot = make_bot(backend)
    async with run_bot(bot, server):
        question = await server.send_message(world.dm, world.alice, "hold")
        reply = await reply_to(server, world.dm, question, ["Stop"])
        stop = Control(STOP, int(question["id"]), world.alice.id).custom_id
        await server.press(world.dm, reply["id"], stop, world.alice)
        await reply_to(server, world.dm, question, ["Regenerate"])
        regenerate = Control(REGENERATE, int(question["id"]), world.alice.id).custom_id
        await server.press(world.dm, reply["id"], regenerate, world.alice)
        await server.wait_for(lambda: server.buttons(world.dm, reply["id"]) == ["Stop"], timeout=15)
        assert bot.attending()
        RELEASE.set()
        await settle(bot)
        final = server.message(world.dm, reply["id"])
        assert final["content"] == "Let me think done."
        assert server.buttons(world.dm, reply["id"]) == ["Regenerate"]


async def test_an_edited_questions_reply_is_not_stripped_of_its_new_buttons(
    world: World, backend: Streamer
) -> None:
    """The re-answer goes into the old reply, which showed buttons: removing an older reply's
    buttons must leave that one alone, even when the removal is slow (a retried request)."""
    server = world.server
    bot = make_bot(backend)
    async with run_bot(bot, server):
        question = await server.send_message(world.dm, world.alice, "one")
        first = await reply_to(server, world.dm, question, ["Regenerate"])
        server.fail_requests("PATCH", "/channels/{channel_id}/messages/{message_id}", times=1)
        await server.edit_message(world.dm, question["id"], "two")
        await server.wait_for(
            lambda: server.message(world.dm, first["id"])["content"].endswith(": two"), timeout=15
        )
        await settle(bot)
        await asyncio.wait_for(asyncio.gather(*bot.controls._tasks), 15)
        assert server.buttons(world.dm, first["id"]) == ["Regenerate"]


async def test_in_thread_mode_an_edit_is_answered_again_in_place_where_no_thread_opened(
    world: World, backend: Streamer
) -> None:
    server = world.server
    server.set_overwrite(world.general, server.bot_user, deny=CREATE_PUBLIC_THREADS)
    bot = make_bot(backend, reply_mode="thread")
    async with run_bot(bot, server):
        question = await server.send_message(world.general, world.alice, "one", mentions_bot=True)
        first = await reply_to(server, world.general, question, ["Regenerate"])
        await server.edit_message(world.general, question["id"], f"<@{server.bot_user.id}> two")
        await server.wait_for(
            lambda: server.message(world.general, first["id"])["content"].endswith(": two"),
            timeout=15,
        )
        await settle(bot)
    assert [m["id"] for m in server.bot_messages(world.general)] == [first["id"]]


async def test_a_double_press_of_regenerate_regenerates_once(
    world: World, backend: Streamer
) -> None:
    server = world.server
    bot = make_bot(backend, parallel=2)
    async with run_bot(bot, server):
        question = await server.send_message(world.dm, world.alice, "one")
        reply = await reply_to(server, world.dm, question, ["Regenerate"])
        custom_id = Control(REGENERATE, int(question["id"]), world.alice.id).custom_id
        first = await server.press(world.dm, reply["id"], custom_id, world.alice)
        second = await server.press(world.dm, reply["id"], custom_id, world.alice)
        refused = await second.wait_response()
        await first.wait_response()
        await server.wait_for(lambda: len(SEEN) >= 2, timeout=15)
        await settle(bot)
    assert refused["ephemeral"] and refused["content"] == Controls.busy_text
    assert len(SEEN) == 2


async def test_a_long_answer_in_a_thread_mode_thread_is_replaced_when_its_question_is_edited(
    world: World, backend: Streamer
) -> None:
    server = world.server
    bot = make_bot(backend, reply_mode="thread")
    async with run_bot(bot, server):
        question = await server.send_message(world.general, world.alice, "long", mentions_bot=True)
        thread = await world.opened(question)

        def answer() -> list[dict[str, Any]]:
            return [m for m in server.bot_messages(thread) if m["type"] != 21]

        await server.wait_for(lambda: len(answer()) == 2, timeout=15)
        await reply_to(server, thread, question, [])  # the first part: no buttons
        first = answer()[0]
        await server.edit_message(world.general, question["id"], "short")
        await server.wait_for(
            lambda: [m["content"] for m in answer()] == ["answer (seed None): short"], timeout=15
        )
        await settle(bot)
    assert answer()[0]["id"] == first["id"]
