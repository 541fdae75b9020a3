"""A Regenerate press over the rate limit or a quota: Discord lets the bot answer a press
privately, so the notice is an ephemeral followup to the press (each refused press gets one: it
answers that press, only the presser sees it), not a reply in the channel; the reply stays as it
was. (A refused message is told once, as a brief reply: tests/test_quota.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chat_workers import RELEASE
from chat_world import Chat
from genbot.controls import REGENERATE
from genbot.quota import LimitTexts
from genbot.streaming import Streamer
from genbot.testing import DiscordServer, run_bot
from test_controls import answered, custom_id, make_bot, seeded

RATE_NOTE = LimitTexts.rate.split("{", 1)[0]  # "You are sending messages too fast (limit: "


@pytest.fixture
def model() -> Iterator[Streamer]:
    RELEASE.clear()
    seeded.start_thread(maximum=1)
    try:
        yield seeded
    finally:
        RELEASE.set()
        seeded.close()


@pytest.fixture
async def chat() -> AsyncIterator[Chat]:
    async with DiscordServer() as server:
        yield Chat(server)


async def test_a_refused_regenerate_press_is_told_ephemerally(
    chat: Chat, model: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    bot = make_bot(model, tmp_path, user_rate="1/hour")
    async with run_bot(bot, server):
        question = await server.send_message(chat.general, chat.alice, "hello", mentions_bot=True)
        first = await answered(chat, question, ["Regenerate"])
        regenerate = custom_id(REGENERATE, question, chat.alice)
        for _ in range(2):  # each refused press is answered, only to the presser
            press = await server.press(chat.general, first["id"], regenerate, chat.alice)
            notice = await press.wait_response(timeout=15, index=1)
            assert notice["ephemeral"], notice
            assert notice["content"].startswith(f"*{RATE_NOTE}1/hour). Try again in"), notice
        assert server.message(chat.general, first["id"])["content"] == first["content"]
        assert [m["id"] for m in server.bot_messages(chat.general)] == [first["id"]]
