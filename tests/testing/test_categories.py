"""A category holds no messages, as on Discord: the bot's POST to one is answered 400 with
code 50008, and a test that posts into one as a user is told it is a mistake."""

from __future__ import annotations

import discord
import pytest
from loopback_world import Recorder, World

from genbot.testing import run_bot


async def test_nothing_can_be_posted_in_a_category(world: World) -> None:
    server = world.server
    ships = server.create_category(world.guild, "Ships")
    with pytest.raises(ValueError, match="category"):
        await server.send_message(ships, world.alice, "ahoy")
    bot = Recorder()
    async with run_bot(bot, server):
        params = discord.http.handle_message_parameters(content="ahoy")
        with pytest.raises(discord.HTTPException) as refused:
            await bot.http.send_message(ships.id, params=params)
    assert (refused.value.status, refused.value.code) == (400, 50008)
    assert not ships.messages
