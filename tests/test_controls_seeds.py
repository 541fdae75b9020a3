"""Regenerate draws a new seed at every press, also where the profile fixes one (``seed = 7``):
each press writes a new sample into the same message."""

from __future__ import annotations

from pathlib import Path

from chat_world import Chat, settle
from genbot.streaming import Streamer
from genbot.testing import run_bot
from test_controls import answered, ask, backend, chat, make_bot, regenerated

__all__ = ["backend", "chat"]


async def test_each_regenerate_draws_a_new_seed_even_where_the_seed_is_fixed(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    bot = make_bot(backend, tmp_path, seed=7)
    async with run_bot(bot, server):
        question, first = await ask(chat)
        assert first["content"] == "answer (seed 7): hello"
        seen = [first["content"]]
        for _ in range(2):
            before = await answered(chat, question, ["Regenerate"])
            await regenerated(chat, before, question, chat.alice)
            after = await answered(chat, question, ["Regenerate"])
            assert after["id"] == first["id"]
            seen.append(after["content"])
    assert len(set(seen)) == 3  # three samples, three seeds
    assert all(s.startswith("answer (seed ") and s.endswith("): hello") for s in seen)
    assert [m["id"] for m in server.bot_messages(chat.general)] == [first["id"]]


async def test_regenerate_pressed_as_soon_as_an_edits_new_answer_shows_is_taken(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    bot = make_bot(backend, tmp_path)
    async with run_bot(bot, server):
        question, first = await ask(chat)
        await settle(bot)
        await server.edit_message(chat.general, question["id"], f"<@{server.bot_user.id}> bye")
        await server.wait_for(
            lambda: (
                server.message(chat.general, first["id"])["content"].endswith("): bye")
                and server.buttons(chat.general, first["id"]) == ["Regenerate"]
            ),
            timeout=15,
        )
        shown = dict(server.message(chat.general, first["id"]))
        await regenerated(chat, shown, question, chat.alice)  # no "still being written"
        again = await answered(chat, question, ["Regenerate"])
    assert again["id"] == first["id"] and again["content"].endswith("): bye")
    assert again["content"] != shown["content"]
