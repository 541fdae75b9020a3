"""The ready-made chat bot end to end: loopback Discord, a real model, streamed replies."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import genbot
from genbot.chatbot import ChatBot
from genbot.models.llamacpp import LlamaCppStreamer
from genbot.output import DEFAULT_ERROR_TEXT
from genbot.settings import Settings
from genbot.testing import DiscordServer, FakeChannel, FakeUser, run_bot
from models.call_schema import CALL_SCHEMA  # tests/models: held to it, SmolLM2 calls a tool

FAST: dict[str, Any] = {"guild_ready_timeout": 0.05, "shutdown_timeout": 2.0}
EDIT = ("PATCH", "/channels/{channel_id}/messages/{message_id}")


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LlamaCppStreamer]:
    """The embedded default model in a worker process, shared by this module's tests."""
    backend = LlamaCppStreamer(n_parallel=2)
    backend.start_process()
    yield backend
    backend.close()


@genbot.streamer
def broken(streams: list[Any]) -> None:
    """Passes the one-token warm-up, then fails every reply after its first delta."""
    for stream in streams:
        stream.write("Let me think")
        if stream.data.settings.max_new_tokens == 1:
            stream.close()
    if any(not stream.closed for stream in streams):
        raise RuntimeError("the GPU caught fire")


@genbot.streamer
def unloadable(streams: list[Any]) -> None:
    raise RuntimeError("model file is corrupt")


class Chat:
    def __init__(self, server: DiscordServer) -> None:
        self.server = server
        guild = server.create_guild("Guild")
        self.alice: FakeUser = server.create_user("alice")
        server.add_member(guild, self.alice)
        self.general: FakeChannel = server.create_channel(guild, "general")


@pytest.fixture
async def chat() -> AsyncIterator[Chat]:
    async with DiscordServer() as server:
        yield Chat(server)


async def settle(bot: ChatBot, timeout: float = 60.0) -> None:
    """Wait until the bot has no attend running (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while running := bot.attending():
        assert loop.time() < deadline, "the bot is still attending"
        await asyncio.wait(running, timeout=deadline - loop.time())


def settings(**values: Any) -> Settings:
    defaults = {"max_new_tokens": 24, "temperature": 0.0, "edit_interval": 0.2}
    return Settings().updated({**defaults, **values}, "test")


async def test_a_mention_gets_a_streamed_reply_from_the_default_model(
    chat: Chat, smollm2: LlamaCppStreamer
) -> None:
    server = chat.server
    bot = ChatBot(settings(), backend=smollm2, close_streamers=False, **FAST)
    async with run_bot(bot, server, timeout=120):
        question = await server.send_message(
            chat.general, chat.alice, "What is the capital of France?", mentions_bot=True
        )
        await server.wait_for(lambda: server.bot_messages(chat.general), timeout=60)
        await settle(bot)
    (reply,) = server.bot_messages(chat.general)
    assert reply["message_reference"]["message_id"] == question["id"]
    assert "paris" in reply["content"].lower()
    assert server.typing_events(chat.general), "typing shows until the first delta"
    assert server.request_count(*EDIT) >= 1, "the reply was streamed as edits"


async def test_a_failing_backend_produces_a_visible_error_reply(chat: Chat) -> None:
    server = chat.server
    broken.start_thread()
    try:
        bot = ChatBot(settings(), backend=broken, **FAST)
        async with run_bot(bot, server):
            await server.send_message(chat.general, chat.alice, "hello?", mentions_bot=True)
            await server.wait_for(
                lambda: any(
                    DEFAULT_ERROR_TEXT in m["content"] for m in server.bot_messages(chat.general)
                ),
                timeout=30,
            )
    finally:
        broken.close()
    (reply,) = server.bot_messages(chat.general)
    assert reply["content"].startswith("Let me think")


async def test_a_model_that_cannot_load_stops_the_start(chat: Chat) -> None:
    unloadable.start_thread()
    try:
        bot = ChatBot(settings(), backend=unloadable, **FAST)
        with pytest.raises(genbot.StreamError, match="model file is corrupt"):
            async with run_bot(bot, chat.server):
                pass
    finally:
        unloadable.close()
    assert not chat.server.connected, "the bot never went online"


async def test_messages_that_arrive_while_replying_get_one_more_reply(chat: Chat) -> None:
    """The gatekept attend absorbs the messages sent while it generates, sees at the end that
    its context is stale, and attends once more with all of them."""
    server, generating, release = chat.server, threading.Event(), threading.Event()
    prompts: list[list[str]] = []

    @genbot.streamer
    def held(streams: list[Any]) -> None:
        for stream in streams:
            if stream.data.settings.max_new_tokens > 1:  # not the warm-up
                prompts.append([m["content"] for m in stream.data.messages if m["role"] == "user"])
                generating.set()
                release.wait(10)
            stream.write(f"answer {len(prompts)}")
            stream.close()

    held.start_thread()
    dm = server.create_dm(chat.alice)
    try:
        bot = ChatBot(settings(), backend=held, **FAST)
        async with run_bot(bot, server):
            await server.send_message(dm, chat.alice, "first")
            assert await asyncio.to_thread(generating.wait, 10)
            for text in ("second", "third"):
                seen = asyncio.ensure_future(
                    bot.wait_for("message", check=lambda m, text=text: m.content == text, timeout=5)
                )
                last = await server.send_message(dm, chat.alice, text)
                await seen
            release.set()
            await server.wait_for(lambda: len(server.bot_messages(dm)) == 2, timeout=30)
            await settle(bot)
    finally:
        release.set()
        held.close()
    first_answer, second_answer = server.bot_messages(dm)
    assert (first_answer["content"], second_answer["content"]) == ("answer 1", "answer 2")
    assert second_answer["message_reference"]["message_id"] == last["id"]  # replies to "third"
    assert len(prompts) == 2 and prompts[0] == ["alice: first"]
    assert "alice: second\nalice: third" in "\n".join(prompts[1])  # the follow-up saw both


# -- a tool round trip on the real SmolLM2 (issue 11) ----------------------------------------------


async def test_a_tool_round_trip_on_the_real_model(chat: Chat) -> None:
    server = chat.server
    backend = LlamaCppStreamer(n_parallel=1, extra_body={"json_schema": CALL_SCHEMA})
    backend.start_process()
    asked: list[str] = []
    bot = ChatBot(settings(max_new_tokens=40, max_tool_steps=1), backend=backend, **FAST)

    @bot.tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        asked.append(city)
        return f"sunny in {city}, 21 C"

    try:
        async with run_bot(bot, server, timeout=120):
            await server.send_message(
                chat.general, chat.alice, "What is the weather in Paris?", mentions_bot=True
            )
            await server.wait_for(lambda: asked, timeout=60)
            await settle(bot)
    finally:
        backend.close()
    assert asked == ["Paris"]  # the model's call, checked and run
    (reply,) = server.bot_messages(chat.general)
    # its status line with the outcome; the last step (without tools) is held to the schema
    # too, so its text is one more JSON object rather than prose
    assert "using `get_weather`" in reply["content"]
