"""Each named model is a Streamer of its own with the life of the default one: warmed up once
before its first chat, a chat waiting for it while another chat holds it (with the queued
note), and closed when the bot shuts down; a model no place uses is never started."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import genbot
from bot_world import FAST, World, world
from genbot.chatbot import ChatBot
from genbot.settings import Settings
from genbot.streaming import Stream, Streamer
from genbot.testing import FakeChannel, run_bot

#: What each model did, in order: ("warm", name) for a warm-up, ("chat", name) for a chat.
EVENTS: list[tuple[str, str]] = []
#: A chat saying ``wait`` holds its slot until this is set (bounded).
GO = threading.Event()


def _answer(name: str, streams: list[Stream]) -> None:
    for stream in streams:
        if stream.data.settings.max_new_tokens == 1:
            EVENTS.append(("warm", name))
            stream.write("ok")
            stream.close()
            continue
        EVENTS.append(("chat", name))
        said = [m["content"] for m in stream.data.messages if m["role"] == "user"][-1]
        said = said.splitlines()[-1].split(": ", 1)[-1]
        stream.write(f"{name} |")
        if said == "wait":
            GO.wait(30)
        stream.write(f" {said}")
        stream.close()


@genbot.streamer
def main(streams: list[Stream]) -> None:
    _answer("main", streams)


@genbot.streamer
def tiny(streams: list[Stream]) -> None:
    _answer("tiny", streams)


@genbot.streamer
def spare(streams: list[Stream]) -> None:
    _answer("spare", streams)


MODELS: dict[str, Streamer] = {"tiny": tiny, "spare": spare}


@pytest.fixture
def models() -> Iterator[None]:
    EVENTS.clear()
    GO.clear()
    main.start_thread(maximum=4)
    tiny.start_thread(maximum=1)  # one slot
    try:
        yield
    finally:
        GO.set()
        for each in (main, tiny, spare):
            each.close()


class Bot(ChatBot):
    queued_after = 0.05  # a chat waiting for a slot says so at once: the test waits on that

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings, backend=main, **kwargs)

    def new_backend(self, settings: Settings) -> Streamer:
        return MODELS[settings.model]


def make_bot(tmp_path: Path, w: World, lab: FakeChannel, other: FakeChannel) -> Bot:
    text = f"""
data_dir = "{tmp_path / "data"}"
edit_interval = 0.2
channels = [{lab.id}, {other.id}]

[models.tiny]
backend = "openai"
model = "tiny"

[models.spare]
backend = "openai"
model = "spare"

[[places]]
id = {lab.id}
model = "tiny"

[[places]]
id = {other.id}
model = "tiny"
"""
    path = tmp_path / "genbot.toml"
    path.write_text(text, encoding="utf-8")
    return Bot(Settings.load(path, environ={}), **FAST)  # closes its streamers at shutdown


def replies(w: World, channel: FakeChannel) -> list[str]:
    return [m["content"] for m in w.server.bot_messages(channel)]


async def test_a_named_model_is_warmed_up_once_before_its_chats_and_closes_with_the_bot(
    tmp_path: Path, models: None
) -> None:
    async with world() as w:
        lab = w.server.create_channel(w.guild, "lab")
        other = w.server.create_channel(w.guild, "other")
        bot = make_bot(tmp_path, w, lab, other)
        async with run_bot(bot, w.server):
            await w.server.send_message(lab, w.alice, "wait")
            await w.server.wait_for(lambda: ("chat", "tiny") in EVENTS, timeout=15)
            await w.server.send_message(other, w.bob, "next")  # tiny's one slot is held
            queued = bot.queued_text
            await w.server.wait_for(lambda: queued in str(replies(w, other)), timeout=15)
            assert EVENTS.count(("chat", "tiny")) == 1  # the second chat waits for the slot
            GO.set()
            await w.server.wait_for(lambda: replies(w, other) == ["tiny | next"], timeout=15)
            await w.server.wait_for(lambda: replies(w, lab) == ["tiny | wait"], timeout=15)
            running = [m.running for m in (main, tiny, spare)]
        tinys = [e for e in EVENTS if e[1] == "tiny"]
        assert tinys == [("warm", "tiny"), ("chat", "tiny"), ("chat", "tiny")]
        assert ("warm", "main") in EVENTS and not any(e[1] == "spare" for e in EVENTS)
        assert running == [True, True, False]  # spare was never started
        assert [m.running for m in (main, tiny)] == [False, False]  # the bot closed both
