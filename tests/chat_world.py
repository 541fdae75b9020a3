"""A loopback Discord with one user, alice, in a guild's #general and in a DM: the scene of the
ready-made bot's reliability and metrics tests."""

from __future__ import annotations

from genbot.testing import DiscordServer, FakeChannel, FakeUser


class Chat:
    def __init__(self, server: DiscordServer) -> None:
        self.server = server
        guild = server.create_guild("Guild")
        self.alice: FakeUser = server.create_user("alice")
        server.add_member(guild, self.alice)
        self.general: FakeChannel = server.create_channel(guild, "general")
        self.dm: FakeChannel = server.create_dm(self.alice)

    def replies(self, channel: FakeChannel) -> list[str]:
        return [m["content"] for m in self.server.bot_messages(channel)]

    async def wait_for_reply(self, channel: FakeChannel, content: str, timeout: float = 15) -> None:
        await self.server.wait_for(lambda: content in self.replies(channel), timeout=timeout)
