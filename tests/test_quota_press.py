"""A Regenerate press over the rate limit or a quota: Discord lets the bot answer a press
privately, so the notice is an ephemeral followup to the press (each refused press gets one: it
answers that press, only the presser sees it), not a reply in the channel; the reply stays as it
was. (A refused message is told once, as a brief reply: tests/test_quota.py.)"""

from __future__ import annotations

from pathlib import Path

from chat_world import Chat
from genbot.controls import REGENERATE
from genbot.quota import LimitTexts
from genbot.streaming import Streamer
from genbot.testing import run_bot
from test_controls import ask, backend, chat, make_bot, press

__all__ = ["backend", "chat"]  # the fixtures

RATE_NOTE = LimitTexts.rate.split("{", 1)[0]  # "You are sending messages too fast (limit: "


async def test_a_refused_regenerate_press_is_told_ephemerally(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    bot = make_bot(backend, tmp_path, user_rate="1/hour")
    async with run_bot(bot, server):
        question, first = await ask(chat)
        for _ in range(2):  # each refused press is answered, only to the presser
            refused = await press(chat, REGENERATE, first, question)
            notice = await refused.wait_response(timeout=15, index=1)
            assert notice["ephemeral"], notice
            assert notice["content"].startswith(f"*{RATE_NOTE}1/hour). Try again in"), notice
        assert server.message(chat.general, first["id"])["content"] == first["content"]
        assert [m["id"] for m in server.bot_messages(chat.general)] == [first["id"]]
