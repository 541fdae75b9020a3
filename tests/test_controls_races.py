"""One writer per reply (issue 8's rough edges): a regeneration and an edited question's new
answer never write the same reply at once, Stop cancels a regeneration that waits for a model
slot, and the presser of Regenerate pays for it. On the loopback Discord, with the scripted
worker of ``test_controls`` (one slot; ``hold`` keeps it until its stream is closed)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from chat_workers import RELEASE
from chat_world import Chat, settle
from genbot.controls import REGENERATE, STOP
from genbot.streaming import Streamer
from genbot.testing import run_bot
from test_controls import answered, ask, backend, chat, make_bot, press, shows

__all__ = ["backend", "chat"]  # the fixtures

SEEDED = re.compile(r"seed [0-9]+")


async def hold_the_slot(chat: Chat) -> None:
    """Alice's DM chat takes the only model slot until the test sets RELEASE."""
    await chat.server.send_message(chat.dm, chat.alice, "hold")
    await chat.wait_for_reply(chat.dm, "Let me think")


def recorder(chat: Chat, seen: list[str]) -> asyncio.Future[None]:
    """Record every content the bot's messages in #general ever show (until cancelled)."""

    def record() -> bool:
        seen.extend(m["content"] for m in chat.server.bot_messages(chat.general))
        return False

    return asyncio.ensure_future(chat.server.wait_for(record, timeout=60))


async def stop_recording(recording: asyncio.Future[None]) -> None:
    recording.cancel()
    await asyncio.gather(recording, return_exceptions=True)


async def test_stop_cancels_a_regeneration_waiting_for_a_slot_and_the_old_text_stays(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    bot = make_bot(backend, tmp_path)
    async with run_bot(bot, server):
        question, first = await ask(chat)
        await hold_the_slot(chat)
        await press(chat, REGENERATE, first, question)
        # it waits for the slot, and its message shows Stop meanwhile
        await server.wait_for(lambda: server.buttons(chat.general, first["id"]) == ["Stop"])
        response = await (await press(chat, STOP, first, question)).wait_response()
        assert response["type"] == 6  # acknowledged, not "already done"
        await server.wait_for(lambda: server.buttons(chat.general, first["id"]) == ["Regenerate"])
        RELEASE.set()  # the slot comes free: nothing is regenerated any more
        await chat.wait_for_reply(chat.dm, "Let me think done.")
        await settle(bot)
        assert server.message(chat.general, first["id"])["content"] == first["content"]
        assert not bot.controls.regenerating and not bot.controls.running


async def test_an_edit_supersedes_a_waiting_regeneration_which_never_writes(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    seen: list[str] = []
    bot = make_bot(backend, tmp_path)
    async with run_bot(bot, server):
        question, first = await ask(chat)
        recording = recorder(chat, seen)
        try:
            await hold_the_slot(chat)
            await press(chat, REGENERATE, first, question)
            await server.wait_for(lambda: int(question["id"]) in bot.controls.regenerating)
            await server.edit_message(chat.general, question["id"], f"<@{bot.user.id}> bye")  # type: ignore[union-attr]
            # the bot has seen the edit (it cancelled the regeneration) before the slot frees
            await server.wait_for(lambda: int(question["id"]) not in bot.controls.regenerating)
            RELEASE.set()
            await shows(chat, first, "answer (seed None): bye")
            await settle(bot)
        finally:
            await stop_recording(recording)
    assert server.message(chat.general, first["id"])["content"] == "answer (seed None): bye"
    assert seen and not [text for text in seen if SEEDED.search(text)]  # the regeneration's


async def test_regenerate_is_refused_while_an_edits_answer_waits_for_a_slot(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    bot = make_bot(backend, tmp_path)
    async with run_bot(bot, server):
        question, first = await ask(chat)
        await hold_the_slot(chat)
        edited = time.time()
        await server.edit_message(chat.general, question["id"], f"<@{bot.user.id}> bye")  # type: ignore[union-attr]
        # the edit's new answer waits for the slot (typing shows): it has claimed the reply
        await server.wait_for(
            lambda: any(t >= edited for _, t in server.typing_events(chat.general)), timeout=15
        )
        response = await (await press(chat, REGENERATE, first, question)).wait_response()
        assert response["ephemeral"] and response["content"] == bot.controls.busy_text
        RELEASE.set()
        await shows(chat, first, "answer (seed None): bye")
        await settle(bot)
    assert server.message(chat.general, first["id"])["content"] == "answer (seed None): bye"


async def test_an_edit_stops_a_streaming_regeneration_and_then_answers_in_the_same_message(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    bot = make_bot(backend, tmp_path)
    async with run_bot(bot, server):
        question, reply = await ask(chat, "hold", ("Stop",))
        await press(chat, STOP, reply, question)
        await answered(chat, question, ["Regenerate"])
        await press(chat, REGENERATE, reply, question)
        # the regeneration streams into the reply and holds the only slot
        await shows(chat, reply, "Let me think")
        await server.edit_message(chat.general, question["id"], f"<@{bot.user.id}> hi")  # type: ignore[union-attr]
        await shows(chat, reply, "answer (seed None): hi")
        await settle(bot)
    assert [m["id"] for m in server.bot_messages(chat.general)] == [reply["id"]]
    assert server.buttons(chat.general, reply["id"]) == ["Regenerate"]


async def test_an_admins_regenerate_is_paid_by_the_admin_not_by_the_asker(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    admin = chat.member("admin")
    bot = make_bot(backend, tmp_path, admins=[admin.id], user_tokens_per_day=1)
    async with run_bot(bot, server):
        question, first = await ask(chat)
        await settle(bot)
        spent = (await bot.usage.used("user", chat.alice.id)).tokens
        assert spent >= 1  # alice is over her quota now
        await press(chat, REGENERATE, first, question, admin)
        await server.wait_for(
            lambda: SEEDED.search(server.message(chat.general, first["id"])["content"]) is not None,
            timeout=15,
        )
        await settle(bot)
        assert (await bot.usage.used("user", chat.alice.id)).tokens == spent
        assert (await bot.usage.used("user", admin.id)).tokens >= 1
    assert len(server.bot_messages(chat.general)) == 1  # no quota note for alice
