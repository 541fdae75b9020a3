"""Threads, DMs, members and roles through a real discord.py client."""

from __future__ import annotations

import asyncio

import discord
from loopback_world import Recorder, World

from genbot.testing import run_bot


async def test_threads_from_a_message_and_without(world: World) -> None:
    server = world.server
    bot = Recorder()
    async with run_bot(bot, server):
        channel = bot.get_channel(world.channel.id)
        starter = await channel.send("let's talk")
        created = asyncio.ensure_future(bot.wait_for("thread_create", timeout=5))
        thread = await starter.create_thread(name="talk")
        assert thread.id == starter.id and thread.parent_id == channel.id
        assert (await created).id == thread.id
        assert bot.get_channel(thread.id) is not None
        in_thread = await thread.send("inside")
        assert server.message(thread.id, in_thread.id)["content"] == "inside"
        free = await channel.create_thread(name="free", type=discord.ChannelType.public_thread)
        assert free.type is discord.ChannelType.public_thread
        notice = server.bot_messages(world.channel)[-1]
        assert notice["type"] == 18 and notice["content"] == "free"
        private = await channel.create_thread(name="secret")
        assert private.type is discord.ChannelType.private_thread
        incoming = asyncio.ensure_future(bot.next_message())
        await server.send_message(free.id, world.alice, "hi in thread")
        assert (await incoming).channel.id == free.id


async def test_existing_threads_arrive_in_guild_create(world: World) -> None:
    server = world.server
    thread = server.create_thread(world.channel, "old", owner=world.alice, members=[world.bob])
    bot = Recorder()
    async with run_bot(bot, server):
        seen = bot.get_guild(world.guild.id).get_thread(thread.id)
        assert seen is not None and seen.owner_id == world.alice.id
        later = server.create_channel(world.guild, "later")
        created = asyncio.ensure_future(bot.wait_for("guild_channel_create", timeout=5))
        await server.announce_channel(later)
        assert (await created).name == "later"
        assert seen.me is None
        joined = asyncio.ensure_future(bot.wait_for("thread_join", timeout=5))
        await server.add_thread_members(thread, [server.bot_user])
        assert await joined is seen and seen.me is not None
        mine = server.create_thread(world.channel, "mine", members=[world.alice])
        await server.announce_channel(mine)
        await bot.wait_for("thread_create", timeout=5)


async def test_dms_both_ways(world: World) -> None:
    server = world.server
    bot = Recorder()
    async with run_bot(bot, server):
        user = await bot.fetch_user(world.alice.id)
        dm = await user.create_dm()
        sent = await dm.send("hello in private")
        fake_dm = server.create_dm(world.alice)
        assert fake_dm.id == dm.id
        assert [m["content"] for m in server.bot_messages(fake_dm)] == ["hello in private"]
        incoming = asyncio.ensure_future(bot.next_message())
        await server.send_message(fake_dm, world.alice, "hi back", reply_to=int(sent.id))
        received = await incoming
        assert isinstance(received.channel, discord.DMChannel)
        assert received.content == "hi back" and received.reference.message_id == sent.id


async def test_members_roles_and_member_updates(world: World) -> None:
    server = world.server
    bot = Recorder()
    async with run_bot(bot, server):
        guild = bot.get_guild(world.guild.id)
        alice = guild.get_member(world.alice.id)
        assert [r.name for r in alice.roles] == ["@everyone", "mods"]
        fetched = await guild.fetch_member(world.bob.id)
        assert fetched.roles == [guild.default_role]
        assert {r.name for r in await guild.fetch_roles()} == {"@everyone", "mods"}
        updated = asyncio.ensure_future(bot.wait_for("member_update", timeout=5))
        await server.update_member(world.guild, world.bob, roles=[world.mods])
        before, after = await updated
        assert (before.roles, [r.name for r in after.roles]) == (
            [guild.default_role],
            ["@everyone", "mods"],
        )
        found = await guild.query_members("al")
        assert [m.id for m in found] == [world.alice.id]
        assert {m.id async for m in guild.fetch_members(limit=None)} == {
            world.alice.id,
            world.bob.id,
            server.bot_user.id,
            world.guild.owner_id,
        }


async def test_members_are_chunked_at_startup_with_the_members_intent(world: World) -> None:
    server = world.server
    intents = discord.Intents.default()
    intents.members = True
    bot = Recorder(intents=intents, member_cache_flags=discord.MemberCacheFlags.all())
    async with run_bot(bot, server):
        guild = bot.get_guild(world.guild.id)
        assert guild.chunked
        assert guild.get_member(world.bob.id) is not None
