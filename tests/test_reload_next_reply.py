"""``/reload`` applies prompts, sampling and limits to the next reply, without a restart: a model
that echoes the system prompt and temperature it was given shows the new ones, and a
``user_rate`` set by the reload limits the next chats (with its one notice)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot_world import World, send, world
from genbot.chatbot import ChatBot
from genbot.commands import Texts
from genbot.quota import LimitTexts
from genbot.streaming import FunctionStreamer, Stream, Streamer
from genbot.testing import run_bot
from test_reload import Config, chat_bot, reload

RATE_NOTE = "*" + LimitTexts.rate.split("{", 1)[0]


def echo_settings(streams: list[Stream]) -> None:
    """``<temperature> | <system prompt> | answer: <what was said>``."""
    for stream in streams:
        messages = stream.data.messages
        if stream.data.settings.max_new_tokens == 1:  # a warm-up
            stream.write("ok")
            continue
        system = messages[0]["content"] if messages[0]["role"] == "system" else "-"
        said = messages[-1]["content"].splitlines()[-1].split(": ", 1)[-1]
        stream.write(f"{stream.data.settings.temperature} | {system} | answer: {said}")


async def chats(bot: ChatBot, w: World, text: str) -> bool:
    """Whether alice's ``text`` in her DM is answered (once the bot is done with it)."""
    dm = w.server.create_dm(w.alice)
    await send(bot, w.server, dm, w.alice, text)  # the bot has seen it: an attend started, or not
    if bot.attending():
        await asyncio.wait(bot.attending(), timeout=30)
    assert not bot.attending(), "the bot is still attending"
    return (w.contents(dm) or [""])[-1].endswith(f"answer: {text}")


@pytest.fixture
async def config(tmp_path: Path) -> AsyncIterator[Config]:
    async with world() as w:
        yield Config(tmp_path / "genbot.toml", w)


@pytest.fixture
def model() -> Iterator[Streamer]:
    made = FunctionStreamer(echo_settings, maximum=2)
    made.start_thread()
    try:
        yield made
    finally:
        made.close()


async def test_reload_applies_prompt_sampling_and_rate_at_the_next_reply(
    config: Config, model: Streamer
) -> None:
    w = config.w
    config.write(f'admins = [{w.admin.id}]\nsystem_prompt = "Be brief."\ntemperature = 0.5')
    dm = w.server.create_dm(w.alice)
    async with run_bot(chat_bot(config, model), w.server) as bot:
        assert await chats(bot, w, "one")
        config.write(
            f'admins = [{w.admin.id}]\nsystem_prompt = "Be kind."\ntemperature = 0.25\n'
            'user_rate = "1/hour"'
        )
        answer = await reload(w.server, w.general, w.admin)
        assert answer["content"] == Texts().reloaded.format(
            changes="changed system_prompt, temperature, user_rate"
        )
        assert await chats(bot, w, "two")
        assert not await chats(bot, w, "three")  # over the new rate: one notice
        assert not await chats(bot, w, "four")  # and no more
    one, two, notice = w.contents(dm)
    assert one.startswith("0.5 | Be brief.") and one.endswith("answer: one"), one
    assert two.startswith("0.25 | Be kind.") and two.endswith("answer: two"), two
    assert notice.startswith(f"{RATE_NOTE}1/hour). Try again in"), notice
