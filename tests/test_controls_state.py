"""Stop and Regenerate keep no state for a reply once it is done: a bot that runs for months
answers millions of questions, so nothing per question may stay behind (on the loopback
Discord with the scripted worker of ``test_controls``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chat_world import Chat
from genbot.controls import REGENERATE, STOP, Controls, RunningReply
from genbot.streaming import Streamer
from genbot.testing import run_bot
from test_controls import answered, ask, backend, chat, make_bot, press, regenerated

__all__ = ["backend", "chat"]  # the fixtures


async def test_no_state_is_kept_per_question_after_replies_and_a_regeneration(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    bot = make_bot(backend, tmp_path)
    async with run_bot(bot, server):
        first, reply = await ask(chat, "one")
        await regenerated(chat, reply, first, chat.alice)
        await answered(chat, first, ["Regenerate"])
        await ask(chat, "two")
        await server.wait_for(lambda: not bot.controls.regenerating, timeout=15)
        controls = bot.controls
        if controls._tasks:  # the last button removals may still be under way: bounded wait
            await asyncio.wait(set(controls._tasks), timeout=15)
        kept = {
            name: value
            for name, value in vars(controls).items()
            if isinstance(value, (dict, set)) and value and name not in {"_handlers"}
        }
    assert kept == {}


EDIT = ("PATCH", "/channels/{channel_id}/messages/{message_id}")


async def test_stop_after_a_regeneration_streamed_does_not_cancel_its_last_write(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    """A regeneration whose stream has ended but whose last edit is still under way (here
    held by a 429) is no longer waiting: a Stop press then is told the reply is done; it must
    not cancel the task writing the new text and its Regenerate button."""
    server = chat.server
    bot = make_bot(backend, tmp_path)
    async with run_bot(bot, server):
        question, first = await ask(chat)
        qid = int(question["id"])
        forgotten = asyncio.Event()  # the regeneration's stream ended (no server change)
        forget = bot.controls._forget

        def forget_and_tell(running: RunningReply) -> None:
            forget(running)
            forgotten.set()

        bot.controls._forget = forget_and_tell  # type: ignore[method-assign]
        server.rate_limit(*EDIT, times=1, retry_after=2.0)  # the new text's edit waits a while
        await press(chat, REGENERATE, first, question)
        await asyncio.wait_for(forgotten.wait(), 15)
        await server.wait_for(lambda: server.rate_limited_count(*EDIT) == 1, timeout=15)
        assert qid in bot.controls.regenerating and qid not in bot.controls.running
        response = await (await press(chat, STOP, first, question)).wait_response()
        again = await answered(chat, question, ["Regenerate"])
    assert response["ephemeral"] and response["content"] == Controls.done_text
    assert again["content"].startswith("answer (seed ") and again["content"] != first["content"]
