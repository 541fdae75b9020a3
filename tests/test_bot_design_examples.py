"""Every example of the design doc (../shared/seed/genbot-design.md) except the streamer ones,
corrected, running against the loopback server.

Corrections: ``discord.Genbot`` -> ``genbot.Genbot``; ``@genbot.Genbot`` on attend ->
``@genbot.gatekeep``; ``ctx.current()`` is awaited; the admin id ``09876789656789`` (a syntax
error in Python 3) is written without the leading zero; re-attending passes ``force=True``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import genbot
from bot_world import FAST, send, world
from genbot.gatekeeping import running
from genbot.testing import run_bot


class HelloBot(genbot.Genbot):
    async def attend(self, channel: Any) -> None:
        await channel.send("Hello World!")


async def test_hello_world() -> None:
    async with world() as w, run_bot(HelloBot(**FAST), w.server) as bot:
        dm = w.server.create_dm(w.alice)
        await send(bot, w.server, dm, w.alice, "hi")
        await send(bot, w.server, w.general, w.bob, "hi there", mentions_bot=True)
        await w.server.wait_for(lambda: w.contents(dm) == ["Hello World!"]
                                and w.contents(w.general) == ["Hello World!"])


def test_access_configuration_as_written() -> None:
    # will be interpreted as a whitelist - users that can chat with the bot anywhere, even DMs
    users = [4567898765678987, 5678987656789, 67897678329876]
    # this time, let's just create some blacklisted roles
    roles = {"blacklist": [12345678987653, 98765678987112]}
    # we don't want many people shutting our bot down, so let's whitelist just one
    admins = [9876789656789]
    bot = HelloBot(users=users, roles=roles, admins=admins)
    assert bot.access.may_chat(5678987656789, None)
    assert not bot.access.may_chat(1234, None)
    assert bot.access.may_chat(1234, [])  # servers stay open: roles has no whitelist
    assert not bot.access.may_chat(1234, [12345678987653])
    assert bot.access.is_admin(9876789656789) and not bot.access.is_admin(5678987656789)


async def test_access_configuration_end_to_end() -> None:
    async with world() as w:
        s = w.server
        users, roles, admins = [w.alice.id], {"blacklist": [w.banned.id]}, [w.admin.id]
        banned = s.create_user("banned")
        s.add_member(w.guild, banned, roles=[w.banned])
        async with run_bot(HelloBot(users=users, roles=roles, admins=admins, **FAST), s) as bot:
            alice_dm, bob_dm = s.create_dm(w.alice), s.create_dm(w.bob)
            await send(bot, s, bob_dm, w.bob, "not on the list")  # DMs: users whitelist only
            await send(bot, s, w.general, banned, "blacklisted role", mentions_bot=True)
            await send(bot, s, alice_dm, w.alice, "on the list")
            await s.wait_for(lambda: w.contents(alice_dm) == ["Hello World!"])
            await send(bot, s, w.general, w.bob, "servers are open", mentions_bot=True)
            await s.wait_for(lambda: w.contents(w.general) == ["Hello World!"])
            assert w.contents(bob_dm) == []
            refused = await s.invoke_command(w.general, w.alice, "shutdown")
            assert (await refused.wait_response())["ephemeral"]
            assert not bot.is_closed()
            await s.invoke_command(w.general, w.admin, "shutdown")
            await s.wait_for(lambda: s.connected == 0, timeout=10)
            assert bot.is_closed()


class Gatekept(genbot.Genbot):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runs = 0
        self.running = 0
        self.most_at_once = 0
        self.release = asyncio.Event()

    @genbot.gatekeep
    async def attend(self, channel: Any) -> None:
        # attend to the channel for a while (the doc: 30 seconds) and then ignore it
        self.runs += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.wait_for(self.release.wait(), 10)
        finally:
            self.running -= 1


async def test_gatekeeping() -> None:
    async with world() as w, run_bot(Gatekept(**FAST), w.server) as bot:
        dm = w.server.create_dm(w.alice)
        for n in range(4):
            await send(bot, w.server, dm, w.alice, f"short message {n}")
        assert bot.runs == 1
        bot.release.set()
        await asyncio.wait_for(asyncio.gather(*running(bot)), 5)
        await send(bot, w.server, dm, w.alice, "later")
        await asyncio.wait_for(asyncio.gather(*running(bot)), 5)
        assert bot.runs == 2 and bot.most_at_once == 1


class Transcript(genbot.Genbot):
    async def attend(self, channel: Any) -> None:
        buffer = []
        async for msg in self.context(channel, limit=16):
            buffer.append(f"{msg.author.name}: {msg.content}")

        inputs = "\n".join(buffer[::-1])
        await channel.send(inputs)


async def test_context_window() -> None:
    async with world() as w, run_bot(Transcript(**FAST), w.server) as bot:
        dm = w.server.create_dm(w.alice)
        await send(bot, w.server, dm, w.alice, "hello")
        await w.server.wait_for(lambda: w.contents(dm) == ["alice: hello"])
        await send(bot, w.server, dm, w.alice, "again")
        await w.server.wait_for(lambda: len(w.contents(dm)) == 2)
        assert w.contents(dm)[1] == "alice: hello\ngenbot: alice: hello\nalice: again"


class Current(genbot.Genbot):
    """The design's ctx.current() example; `awaited` picks the form of the re-attend."""

    def __init__(self, awaited: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.awaited = awaited
        self.runs = 0
        self.generating = asyncio.Event()
        self.release = asyncio.Event()

    @genbot.gatekeep
    async def attend(self, channel: Any) -> None:
        self.runs += 1
        buffer = []
        async for msg in (ctx := self.context(channel, limit=16)):
            buffer.append(f"{msg.author.name}: {msg.content}")

        if not ctx:
            return
        # the generation of the response may take some time
        self.generating.set()
        await asyncio.wait_for(self.release.wait(), 10)
        await channel.send(f"run {self.runs} saw {len(buffer)}")
        if not await ctx.current():
            # schedule the whole thing again if there were important updates to the context
            if self.awaited:
                await self.attend(channel, force=True)
            else:
                self.attend(channel, force=True)


@pytest.mark.parametrize("awaited", [False, True])
async def test_two_messages_during_one_attend_lead_to_exactly_one_follow_up(
    awaited: bool,
) -> None:
    async with world() as w, run_bot(Current(awaited, **FAST), w.server) as bot:
        s, dm = w.server, w.server.create_dm(w.alice)
        await send(bot, s, dm, w.alice, "first")
        await asyncio.wait_for(bot.generating.wait(), 5)
        await send(bot, s, dm, w.alice, "second")
        await send(bot, s, dm, w.alice, "third")
        bot.release.set()
        await s.wait_for(lambda: len(w.contents(dm)) == 2)
        await asyncio.wait_for(asyncio.gather(*running(bot)), 5)
        assert bot.runs == 2
        # the follow-up saw first, run 1's answer, second and third
        assert w.contents(dm) == ["run 1 saw 1", "run 2 saw 4"]
