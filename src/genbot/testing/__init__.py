"""A loopback Discord for tests: an aiohttp server on 127.0.0.1 speaking enough of Discord's
REST API v10 and Gateway for an unmodified discord.py client, and a test-facing API to act as
users and inspect what the bot did.

    async with DiscordServer() as server:
        guild = server.create_guild("Guild")
        chan = server.create_channel(guild, "general")
        alice = server.create_user("alice")
        server.add_member(guild, alice)
        async with run_bot(MyClient(intents=..., guild_ready_timeout=0.05), server):
            await server.send_message(chan, alice, "hi", mentions_bot=True)
            await server.wait_for(lambda: server.bot_messages(chan), timeout=5)
"""

from .models import FakeChannel, FakeGuild, FakeInteraction, FakeMember, FakeRole, FakeUser
from .server import DiscordServer, run_bot
from .state import ServerState

__all__ = [
    "DiscordServer",
    "FakeChannel",
    "FakeGuild",
    "FakeInteraction",
    "FakeMember",
    "FakeRole",
    "FakeUser",
    "ServerState",
    "run_bot",
]
