"""A loopback Discord with one user, alice, in a guild's #general and in a DM: the scene of the
ready-made bot's end-to-end tests, with what they share (the bot they make, waiting for it to
settle, the fixture that opens the scene)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from bot_world import FAST
from genbot.chatbot import ChatBot
from genbot.settings import Settings
from genbot.streaming import Streamer
from genbot.testing import DiscordServer, FakeChannel, FakeGuild, FakeUser
from genbot.testing.models import Upload

__all__ = [
    "FAST",
    "Chat",
    "Group",
    "chat_bot",
    "greedy_bot",
    "scene",
    "send_image",
    "settle",
    "texts",
]

T = TypeVar("T")

#: The settings of every test bot unless a test names others: timeouts not under test are long,
#: so a loaded machine cannot trip them.
BOT_DEFAULTS: dict[str, Any] = {"edit_interval": 0.2, "stall_timeout": 30.0, "queue_timeout": 30.0}


class Chat:
    def __init__(self, server: DiscordServer) -> None:
        self.server = server
        self.guild: FakeGuild = server.create_guild("Guild")
        self.alice: FakeUser = self.member("alice")
        self.general: FakeChannel = server.create_channel(self.guild, "general")
        self.dm: FakeChannel = server.create_dm(self.alice)

    def member(self, name: str) -> FakeUser:
        """A new user `name`, a member of the guild."""
        user = self.server.create_user(name)
        self.server.add_member(self.guild, user)
        return user

    def replies(self, channel: FakeChannel) -> list[str]:
        return [m["content"] for m in self.server.bot_messages(channel)]

    async def wait_for_reply(self, channel: FakeChannel, content: str, timeout: float = 15) -> None:
        await self.server.wait_for(lambda: content in self.replies(channel), timeout=timeout)

    async def opened(self, question: dict[str, Any]) -> FakeChannel:
        """The thread opened from `question`, once it is there (a thread from a message has the
        message's id)."""
        server = self.server
        await server.wait_for(lambda: int(question["id"]) in server.state.channels, timeout=15)
        return server.channel(int(question["id"]))


class Group(Chat):
    """The scene with a second member of the guild, bob."""

    def __init__(self, server: DiscordServer) -> None:
        super().__init__(server)
        self.bob: FakeUser = self.member("bob")


def scene(make: Callable[[DiscordServer], T]) -> Callable[[], AsyncIterator[T]]:
    """For a pytest fixture (``chat = pytest.fixture(scene(Chat), name="chat")``): what `make`
    builds on a fresh loopback server, the server open while the test runs."""

    async def open_scene() -> AsyncIterator[T]:
        async with DiscordServer() as server:
            yield make(server)

    return open_scene


def chat_bot(
    backend: Streamer,
    values: dict[str, Any],
    *,
    close_streamers: bool = False,
    queued_after: float | None = None,
) -> ChatBot:
    """The ready-made bot on `backend` with :data:`BOT_DEFAULTS` updated by `values`; a
    `queued_after` other than None replaces the bot's wait before its queued note."""
    settings = Settings().updated({**BOT_DEFAULTS, **values}, "test")
    bot = ChatBot(settings, backend=backend, close_streamers=close_streamers, **FAST)
    if queued_after is not None:
        bot.queued_after = queued_after
    return bot


def greedy_bot(backend: Streamer, values: dict[str, Any]) -> ChatBot:
    """The ready-made bot on `backend`, greedy and with no system prompt (its reply is the
    model's own answer to the chat), with `values` on top; settings not named are the defaults
    (no :data:`BOT_DEFAULTS`)."""
    greedy = {"edit_interval": 0.2, "system_prompt": "", "temperature": 0.0, "repeat_penalty": 1.0}
    settings = Settings().updated({**greedy, **values}, "test")
    return ChatBot(settings, backend=backend, guild_ready_timeout=0.05, close_streamers=False)


async def settle(bot: ChatBot, timeout: float = 30.0) -> None:
    """Wait until the bot has no attend running (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while running := bot.attending():
        assert loop.time() < deadline, "the bot is still attending"
        await asyncio.wait(running, timeout=deadline - loop.time())


async def send_image(chat: Chat, bot: ChatBot, text: str, png: bytes) -> None:
    """Alice sends `text` in her DM with `png` attached as ``a.png`` (stored on the loopback
    CDN); return once the bot has replied and attends nothing any more (60 s at most each)."""
    server = chat.server
    upload = Upload(0, "a.png", "image/png", png)
    attachment = server.state.store_file(chat.dm, upload, "a.png")
    message = server.create_message(
        chat.dm, chat.alice, {"content": text}, attachments=[attachment]
    )
    await server.dispatch_message("MESSAGE_CREATE", message)
    await server.wait_for(lambda: chat.replies(chat.dm), timeout=60)
    while running := bot.attending():
        await asyncio.wait_for(asyncio.gather(*running, return_exceptions=True), 60)


def texts(messages: list[dict[str, Any]]) -> str:
    """The contents of chat `messages`, one a line."""
    return "\n".join(str(m["content"]) for m in messages)
