from __future__ import annotations

import asyncio

import discord
from loopback_world import Recorder, World

from genbot.testing import run_bot


async def test_login_ready_and_message(world: World) -> None:
    server = world.server
    bot = Recorder()
    async with run_bot(bot, server):
        assert bot.user is not None and bot.user.id == server.bot_user.id
        guild = bot.get_guild(world.guild.id)
        assert guild is not None and guild.get_channel(world.channel.id) is not None
        assert guild.get_member(world.alice.id) is not None
        assert bot.latency < 5  # the first heartbeat was acknowledged
        # discord.py asks for transport compression: zlib-stream, or zstd-stream where available.
        asked = discord.utils._ActiveDecompressionContext.COMPRESSION_TYPE
        assert server.gateway_queries == [{"v": "10", "encoding": "json", "compress": asked}]
        incoming = asyncio.ensure_future(bot.next_message())
        await server.send_message(world.channel, world.alice, "hello bot")
        message = await incoming
        assert (message.content, message.author.id) == ("hello bot", world.alice.id)
        # The bot's own post comes back as MESSAGE_CREATE, as on Discord.
        echoed = asyncio.ensure_future(bot.next_message())
        sent = await message.channel.send("hi alice")
        assert (await echoed).id == sent.id
        assert [m["content"] for m in server.bot_messages(world.channel)] == ["hi alice"]
        assert server.request_count("POST", "/channels/{channel_id}/messages") == 1
        assert server.unhandled_requests == []
