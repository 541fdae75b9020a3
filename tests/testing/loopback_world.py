"""Shared pieces of the genbot.testing tests: a populated loopback server and a recording client."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import discord

from genbot.testing import DiscordServer, FakeChannel, FakeGuild, FakeRole, FakeUser


@dataclass
class World:
    server: DiscordServer
    guild: FakeGuild
    channel: FakeChannel
    alice: FakeUser
    bob: FakeUser
    mods: FakeRole


def make_world(server: DiscordServer) -> World:
    guild = server.create_guild("Guild")
    mods = server.create_role(guild, "mods")
    alice = server.create_user("alice")
    bob = server.create_user("bob")
    server.add_member(guild, alice, roles=[mods])
    server.add_member(guild, bob)
    channel = server.create_channel(guild, "general")
    return World(server, guild, channel, alice, bob, mods)


def all_intents(**changes: bool) -> discord.Intents:
    intents = discord.Intents.default()
    intents.message_content = True
    intents.members = True
    for name, value in changes.items():
        setattr(intents, name, value)
    return intents


class Recorder(discord.Client):
    """A plain discord.py client that records the messages it receives."""

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("intents", all_intents())
        super().__init__(guild_ready_timeout=0.05, **kwargs)  # type: ignore[arg-type]
        self.received: list[discord.Message] = []
        self._arrived = asyncio.Event()

    async def on_message(self, message: discord.Message) -> None:
        self.received.append(message)
        self._arrived.set()

    async def received_at_least(self, count: int, timeout: float = 5.0) -> list[discord.Message]:
        """Wait until ``count`` messages were handled by :meth:`on_message` (which runs as a
        task of its own, after discord.py's ``wait_for`` listeners have seen the event)."""

        async def enough() -> None:
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(enough(), timeout)
        return self.received

    def contents(self) -> list[str]:
        return [m.content for m in self.received]

    async def next_message(self, timeout: float = 5.0) -> discord.Message:
        """The next message event (client side; the server's wait_for can't see it)."""
        return await self.wait_for("message", timeout=timeout)
