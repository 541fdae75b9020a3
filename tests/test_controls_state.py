"""Stop and Regenerate keep no state for a reply once it is done: a bot that runs for months
answers millions of questions, so nothing per question may stay behind (on the loopback
Discord with the scripted worker of ``test_controls``)."""

from __future__ import annotations

from pathlib import Path

from chat_world import Chat
from genbot.streaming import Streamer
from genbot.testing import run_bot
from test_controls import answered, backend, chat, make_bot, regenerated

__all__ = ["backend", "chat"]  # the fixtures


async def test_no_state_is_kept_per_question_after_replies_and_a_regeneration(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    bot = make_bot(backend, tmp_path)
    async with run_bot(bot, server):
        first = await server.send_message(chat.general, chat.alice, "one", mentions_bot=True)
        reply = await answered(chat, first, ["Regenerate"])
        await regenerated(chat, reply, first, chat.alice)
        await answered(chat, first, ["Regenerate"])
        second = await server.send_message(chat.general, chat.alice, "two", mentions_bot=True)
        await answered(chat, second, ["Regenerate"])
        await server.wait_for(lambda: not bot.controls.regenerating, timeout=15)
        controls = bot.controls
        kept = {
            name: value
            for name, value in vars(controls).items()
            if isinstance(value, (dict, set)) and value and name not in {"_handlers"}
        }
    assert kept == {}
