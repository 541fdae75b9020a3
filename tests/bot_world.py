"""Shared set-up for the bot's end-to-end tests: a loopback server with a small world in it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from genbot.testing import DiscordServer, FakeChannel, FakeGuild, FakeRole, FakeUser

#: Keyword arguments every test bot gets: no 2 s wait for guilds, short shutdowns.
FAST: dict[str, Any] = {"guild_ready_timeout": 0.05, "shutdown_timeout": 2.0}

HISTORY = ("GET", "/channels/{channel_id}/messages")


@dataclass
class World:
    server: DiscordServer
    guild: FakeGuild
    general: FakeChannel
    mods: FakeRole
    banned: FakeRole
    alice: FakeUser  # plain member
    bob: FakeUser  # plain member
    mod: FakeUser  # holds the mods role
    admin: FakeUser

    def contents(self, channel: FakeChannel) -> list[str]:
        return [m["content"] for m in self.server.bot_messages(channel)]

    def history_requests(self) -> int:
        return self.server.request_count(*HISTORY)


@contextlib.asynccontextmanager
async def world() -> AsyncIterator[World]:
    async with DiscordServer() as server:
        guild = server.create_guild("Guild")
        mods = server.create_role(guild, "mods")
        banned = server.create_role(guild, "banned")
        general = server.create_channel(guild, "general")
        users = [server.create_user(n) for n in ("alice", "bob", "mod", "admin")]
        for user in users:
            server.add_member(guild, user, roles=[mods] if user.name == "mod" else [])
        alice, bob, mod, admin = users
        yield World(server, guild, general, mods, banned, alice, bob, mod, admin)


async def send(
    bot: Any, server: DiscordServer, channel: FakeChannel, user: FakeUser, text: str, **kwargs: Any
) -> dict[str, Any]:
    """Post as `user` and wait until the bot has processed the MESSAGE_CREATE."""
    seen = bot.wait_for(
        "message", check=lambda m: m.author.id == user.id and m.content.endswith(text), timeout=5
    )
    task = asyncio.ensure_future(seen)
    message = await server.send_message(channel, user, text, **kwargs)
    await task
    return message


async def edit(
    bot: Any, server: DiscordServer, channel: FakeChannel, message: dict[str, Any], text: str
) -> None:
    task = asyncio.ensure_future(
        bot.wait_for(
            "raw_message_edit", check=lambda p: p.message_id == int(message["id"]), timeout=5
        )
    )
    await server.edit_message(channel, message, text)
    await task


async def delete(
    bot: Any, server: DiscordServer, channel: FakeChannel, messages: list[dict[str, Any]]
) -> None:
    ids = {int(m["id"]) for m in messages}
    if len(ids) == 1:
        task = asyncio.ensure_future(
            bot.wait_for("raw_message_delete", check=lambda p: p.message_id in ids, timeout=5)
        )
        await server.delete_message(channel, messages[0])
    else:
        task = asyncio.ensure_future(
            bot.wait_for("raw_bulk_message_delete", check=lambda p: p.message_ids == ids, timeout=5)
        )
        await server.bulk_delete(channel, messages)
    await task


async def read(bot: Any, channel_id: int, limit: int = 16) -> list[str]:
    """The context of a channel as contents, newest first."""
    channel = bot.get_channel(channel_id) or bot.get_partial_messageable(channel_id)
    return [m.content async for m in bot.context(channel, limit=limit)]
