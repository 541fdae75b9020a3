"""Stop and Regenerate, end to end: the ready-made bot on the loopback Discord with a real
Streamer whose scripted worker holds a reply until its stream is closed (so only Stop can free
the one model slot) and answers with the seed it was given (so a regeneration shows)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import genbot
from chat_workers import hold_until_closed, said_in, threaded, warm_up
from chat_world import Chat, chat_bot, scene, settle
from genbot.chatbot import ChatBot
from genbot.controls import REGENERATE, STOP, Control, Controls
from genbot.streaming import Stream, Streamer
from genbot.testing import FakeUser, run_bot
from genbot.testing.components import FakeComponentInteraction

STOPPED = "Let me think\n\n*Stopped.*"


def _long(stream: Stream) -> None:
    """Two messages: 30 lines of 99 characters, then the seed."""
    for _ in range(30):
        stream.write("x" * 99 + "\n")
    stream.write(f"(seed {stream.data.settings.seed})")


@genbot.streamer
def seeded(streams: list[Stream]) -> None:
    """``hold``: "Let me think", then nothing until the caller closes the stream (or the test
    releases it: " done."); ``long``: 3000 characters ending with the seed; anything else:
    ``answer (seed S): <what was said>``."""
    for stream in streams:
        if warm_up(stream):
            continue
        said = said_in(stream.data.messages)
        if said == "hold":
            hold_until_closed(stream)
        elif said == "long":
            _long(stream)
        else:
            stream.write(f"answer (seed {stream.data.settings.seed}): {said}")
        stream.close()


@pytest.fixture
def backend() -> Iterator[Streamer]:
    yield from threaded(seeded, 1)


chat = pytest.fixture(scene(Chat), name="chat")


def make_bot(
    backend: Streamer, tmp_path: Path, admins: list[int] | None = None, **values: Any
) -> ChatBot:
    defaults = {"parallel": 1, "data_dir": str(tmp_path), "admins": admins or []}
    # no queued note: the reply is one message
    return chat_bot(backend, {**defaults, **values}, queued_after=30.0)


def custom_id(action: str, question: dict[str, Any], asker: FakeUser) -> str:
    return Control(action, int(question["id"]), asker.id).custom_id


async def answered(chat: Chat, question: dict[str, Any], buttons: list[str]) -> dict[str, Any]:
    """The bot's reply to `question`, once it shows `buttons`."""

    def reply() -> dict[str, Any] | None:
        for message in chat.server.bot_messages(chat.general):
            reference = message.get("message_reference") or {}
            if reference.get("message_id") == question["id"]:
                return message
        return None

    await chat.server.wait_for(
        lambda: (
            (m := reply()) is not None and chat.server.buttons(chat.general, m["id"]) == buttons
        ),
        timeout=15,
    )
    found = reply()
    assert found is not None
    return dict(found)  # a copy: the stored message changes with later edits


async def ask(
    chat: Chat, said: str = "hello", buttons: tuple[str, ...] = ("Regenerate",)
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Alice asks the bot `said` in #general: her question and the bot's reply, once it shows
    `buttons`."""
    question = await chat.server.send_message(chat.general, chat.alice, said, mentions_bot=True)
    return question, await answered(chat, question, list(buttons))


async def press(
    chat: Chat,
    action: str,
    reply: dict[str, Any],
    question: dict[str, Any],
    presser: FakeUser | None = None,
) -> FakeComponentInteraction:
    """`presser` (alice by default) presses `action` on the bot's `reply` to alice's
    `question`."""
    control = custom_id(action, question, chat.alice)
    return await chat.server.press(chat.general, reply["id"], control, presser or chat.alice)


async def shows(chat: Chat, reply: dict[str, Any], text: str) -> None:
    """Wait until the bot's `reply` in #general reads `text`."""
    await chat.server.wait_for(
        lambda: chat.server.message(chat.general, reply["id"])["content"] == text, timeout=15
    )


async def regenerated(
    chat: Chat, reply: dict[str, Any], question: dict[str, Any], presser: FakeUser
) -> None:
    """`presser` presses Regenerate on alice's `reply` to `question`; wait until its text
    changed."""
    server = chat.server
    await press(chat, REGENERATE, reply, question, presser)
    await server.wait_for(
        lambda: server.message(chat.general, reply["id"])["content"] != reply["content"],
        timeout=15,
    )


async def test_stop_frees_the_slot_at_once_and_keeps_the_text_so_far(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    bot = make_bot(backend, tmp_path)
    async with run_bot(bot, server):
        held, reply = await ask(chat, "hold", ("Stop",))
        assert reply["content"] == "Let me think"
        # the only slot is held: a chat in the DM waits for it
        await server.send_message(chat.dm, chat.alice, "next")
        await server.wait_for(lambda: server.typing_events(chat.dm), timeout=15)
        stop = await press(chat, STOP, reply, held)
        await chat.wait_for_reply(chat.dm, "answer (seed None): next")
        stopped = await answered(chat, held, ["Regenerate"])
        await settle(bot)
    assert (await stop.wait_response())["type"] == 6  # acknowledged; the reply shows it
    assert stopped["id"] == reply["id"] and stopped["content"] == STOPPED
    assert not bot.controls.running


async def test_stop_on_a_reply_that_is_no_longer_running_says_so(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    """A Stop button left on a reply (e.g. the bot died while writing it) answers that the
    reply is done, only to the presser."""
    server = chat.server
    question = await server.send_message(chat.general, chat.alice, "hello", mentions_bot=True)
    button = {
        "type": 2,
        "style": 4,
        "label": "Stop",
        "custom_id": custom_id(STOP, question, chat.alice),
    }
    left = server.create_message(
        chat.general,
        server.bot_user,
        {"content": "Let me", "components": [{"type": 1, "components": [button]}]},
        reference={"message_id": question["id"]},
    )
    bot = make_bot(backend, tmp_path)
    async with run_bot(bot, server):
        pressed = await server.press(chat.general, left["id"], button["custom_id"], chat.alice)
        response = await pressed.wait_response()
    assert response["ephemeral"] and response["content"] == Controls.done_text


async def test_regenerate_writes_a_new_sample_into_the_same_message(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    bot = make_bot(backend, tmp_path)
    async with run_bot(bot, server):
        question, first = await ask(chat)
        assert first["content"] == "answer (seed None): hello"
        await regenerated(chat, first, question, chat.alice)
        again = await answered(chat, question, ["Regenerate"])
    assert again["id"] == first["id"]
    assert again["content"].startswith("answer (seed ") and again["content"].endswith("): hello")
    assert [m["id"] for m in server.bot_messages(chat.general)] == [first["id"]]


async def test_a_press_by_someone_else_is_refused_and_an_admin_may(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    bob, admin = chat.member("bob"), chat.member("admin")
    bot = make_bot(backend, tmp_path, admins=[admin.id])
    async with run_bot(bot, server):
        question, first = await ask(chat)
        refused = await (await press(chat, REGENERATE, first, question, bob)).wait_response()
        assert refused["ephemeral"] and refused["content"] == Controls.refused_text
        assert server.message(chat.general, first["id"])["content"] == first["content"]
        await regenerated(chat, first, question, admin)
        await answered(chat, question, ["Regenerate"])


async def test_regenerate_works_after_a_restart_of_the_bot(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    async with run_bot(make_bot(backend, tmp_path), server):
        question, first = await ask(chat)
    async with run_bot(make_bot(backend, tmp_path), server):
        await regenerated(chat, first, question, chat.alice)
        again = await answered(chat, question, ["Regenerate"])
    assert again["content"].endswith("): hello")


async def test_an_older_reply_loses_its_buttons_when_a_newer_one_arrives(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    bot = make_bot(backend, tmp_path)
    async with run_bot(bot, server):
        _, first = await ask(chat, "one")
        await ask(chat, "two")
        await server.wait_for(lambda: not server.buttons(chat.general, first["id"]), timeout=15)
        await settle(bot)
    assert server.message(chat.general, first["id"])["content"] == "answer (seed None): one"


async def test_buttons_can_be_turned_off(chat: Chat, backend: Streamer, tmp_path: Path) -> None:
    server = chat.server
    bot = make_bot(backend, tmp_path, buttons=False)
    async with run_bot(bot, server):
        _, reply = await ask(chat, buttons=())
        await settle(bot)
    assert reply["content"] == "answer (seed None): hello" and reply["components"] == []


async def test_a_long_reply_shows_its_buttons_on_its_last_message_and_regenerates_whole(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    bot = make_bot(backend, tmp_path)
    async with run_bot(bot, server):
        question = await server.send_message(chat.general, chat.alice, "long", mentions_bot=True)
        await server.wait_for(
            lambda: (
                [server.buttons(chat.general, m) for m in server.bot_messages(chat.general)]
                == [[], ["Regenerate"]]
            ),
            timeout=15,
        )
        first, last = (dict(m) for m in server.bot_messages(chat.general))
        assert last["content"].endswith("(seed None)")
        await press(chat, REGENERATE, last, question)
        await server.wait_for(
            lambda: (
                server.bot_messages(chat.general)[-1]["id"] != last["id"]
                and server.buttons(chat.general, server.bot_messages(chat.general)[-1])
                == ["Regenerate"]
            ),
            timeout=15,
        )
        await settle(bot)
        now = server.bot_messages(chat.general)
    assert now[0]["id"] == first["id"] and len(now) == 2
    assert server.buttons(chat.general, now[0]) == []
    assert now[1]["content"].startswith("x") and not now[1]["content"].endswith("(seed None)")
