"""Members leaving a guild (`DiscordServer.remove_member`), the bot being kicked."""

from __future__ import annotations

import asyncio

import discord
import pytest
from loopback_world import Recorder, World

from genbot.testing import run_bot


async def test_a_member_who_leaves_is_announced_and_their_messages_stay(world: World) -> None:
    server = world.server
    thread = server.create_thread(world.channel, "chat", members=[world.alice])
    await server.send_message(world.channel, world.alice, "bye all")
    bot = Recorder()
    async with run_bot(bot, server):
        guild = bot.get_guild(world.guild.id)
        await guild.chunk()
        assert guild.get_member(world.alice.id) is not None
        removed = asyncio.ensure_future(bot.wait_for("member_remove", timeout=5))
        raw = asyncio.ensure_future(bot.wait_for("raw_member_remove", timeout=5))
        await server.remove_member(world.guild, world.alice)
        assert (await removed).id == world.alice.id
        assert (await raw).guild_id == world.guild.id
        assert guild.get_member(world.alice.id) is None
        assert world.alice.id not in thread.thread_members
        history = [m async for m in bot.get_channel(world.channel.id).history()]
        assert [(m.content, m.author.id) for m in history] == [("bye all", world.alice.id)]
        assert not isinstance(history[0].author, discord.Member)
        with pytest.raises(discord.NotFound):
            await guild.fetch_member(world.alice.id)
    with pytest.raises(ValueError, match="not a member"):
        await server.send_message(world.channel, world.alice, "still here?")
    assert [m["content"] for m in server.messages(world.channel)] == ["bye all"]


class RemovalRecorder(Recorder):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.removals: list[discord.RawMemberRemoveEvent] = []

    async def on_raw_member_remove(self, payload: discord.RawMemberRemoveEvent) -> None:
        self.removals.append(payload)


@pytest.mark.parametrize("members_intent", [True, False])
async def test_the_event_needs_the_members_intent(world: World, members_intent: bool) -> None:
    server = world.server
    intents = discord.Intents.default()
    intents.message_content = intents.members = members_intent
    bot = RemovalRecorder(intents=intents)
    async with run_bot(bot, server):
        await server.remove_member(world.guild, world.bob)
        assert world.bob.id not in world.guild.members
        # Events arrive in order: once this message is in, a removal event would be too.
        incoming = asyncio.ensure_future(bot.next_message())
        await server.send_message(world.channel, world.alice, "later")
        await incoming
        assert [r.user.id for r in bot.removals] == ([world.bob.id] if members_intent else [])


async def test_removing_the_bot_is_a_kick(world: World) -> None:
    server = world.server
    bot = Recorder()
    async with run_bot(bot, server):
        channel = bot.get_channel(world.channel.id)
        left = asyncio.ensure_future(bot.wait_for("guild_remove", timeout=5))
        await server.remove_member(world.guild, server.bot_user)
        assert (await left).id == world.guild.id
        assert bot.get_guild(world.guild.id) is None
        with pytest.raises(discord.Forbidden):
            await channel.send("am I still here?")


async def test_removing_a_non_member_or_the_owner_is_a_test_mistake(world: World) -> None:
    server = world.server
    stranger = server.create_user("stranger")
    with pytest.raises(ValueError, match="not a member"):
        await server.remove_member(world.guild, stranger)
    with pytest.raises(ValueError, match="owns"):
        await server.remove_member(world.guild, server.user(world.guild.owner_id))
