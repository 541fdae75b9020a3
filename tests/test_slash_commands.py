"""The built-in slash commands: sync, /ping, /reset, /thread, /shutdown, ephemeral refusals."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import genbot
from bot_world import FAST, send, world
from genbot.commands import NOT_ADMIN, NOT_ALLOWED, Texts
from genbot.context import RESET_MARKER
from genbot.streaming import active_streamers
from genbot.testing import run_bot

NAMES = {"reset", "ping", "thread", "shutdown", "reload", "usage", "memory"}


class Replier(genbot.Genbot):
    async def attend(self, channel: Any) -> None:
        async for msg in self.context(channel, limit=1):
            await channel.send(f"re: {msg.content}")


async def test_commands_synced_at_startup_unless_opted_out() -> None:
    async with world() as w:
        async with run_bot(genbot.Genbot(**FAST), w.server):
            assert {c["name"] for c in w.server.commands()} == NAMES
    async with world() as w:
        async with run_bot(genbot.Genbot(sync_commands=False, **FAST), w.server):
            assert w.server.commands() == []
            with pytest.raises(LookupError):
                await w.server.invoke_command(w.general, w.alice, "ping")


async def test_ping() -> None:
    async with world() as w, run_bot(genbot.Genbot(**FAST), w.server):
        response = await (await w.server.invoke_command(w.general, w.alice, "ping")).wait_response()
        assert response["content"].startswith("Pong!")


async def test_reset_refused_to_users_who_may_not_chat() -> None:
    async with (
        world() as w,
        run_bot(genbot.Genbot(users={"blacklist": [w.bob.id]}, **FAST), w.server),
    ):
        for channel in (w.general, w.server.create_dm(w.bob)):
            interaction = await w.server.invoke_command(channel, w.bob, "reset")
            response = await interaction.wait_response()
            assert response["ephemeral"] and response["content"] == NOT_ALLOWED
            assert all(m["content"] != RESET_MARKER for m in w.server.messages(channel))


async def test_thread_opens_a_chat_thread() -> None:
    async with world() as w, run_bot(Replier(**FAST), w.server) as bot:
        s = w.server
        interaction = await s.invoke_command(w.general, w.alice, "thread", {"name": "chat"})
        thinking = await interaction.wait_response()  # acknowledged before any other request
        assert thinking["type"] == 5 and thinking["ephemeral"]
        response = await interaction.wait_response(index=1)
        assert response["ephemeral"] and response["content"].startswith("Opened <#")
        thread_id = int(response["content"].removeprefix("Opened <#").removesuffix(">."))
        thread = s.channel(thread_id)
        assert thread.name == "chat" and thread.parent_id == w.general.id
        assert thread.owner_id == s.bot_user.id and w.alice.id in thread.thread_members
        await send(bot, s, thread, w.alice, "no mention needed here")
        await s.wait_for(lambda: w.contents(thread) == ["re: no mention needed here"])


async def test_a_failing_command_tells_the_user() -> None:
    async with world() as w, run_bot(genbot.Genbot(**FAST), w.server):
        w.server.rate_limit("POST", "/channels/{channel_id}/threads", times=5, retry_after=0.01)
        interaction = await w.server.invoke_command(w.general, w.alice, "thread", {"name": "x"})
        answer = await interaction.wait_response(index=1)  # after the "thinking..." defer
        assert answer["ephemeral"] and answer["content"] == "Sorry, that failed."


@pytest.mark.parametrize("where", ["dm", "blacklisted"])
async def test_thread_refusals(where: str) -> None:
    async with (
        world() as w,
        run_bot(genbot.Genbot(users={"blacklist": [w.bob.id]}, **FAST), w.server),
    ):
        channel = w.server.create_dm(w.alice) if where == "dm" else w.general
        user = w.alice if where == "dm" else w.bob
        interaction = await w.server.invoke_command(channel, user, "thread", {"name": "x"})
        response = await interaction.wait_response()
        assert response["ephemeral"]
        assert w.server.messages(w.general) == []


async def test_non_admin_shutdown_refused_and_bot_keeps_running() -> None:
    async with world() as w, run_bot(Replier(admins=[w.admin.id], **FAST), w.server) as bot:
        for user in (w.alice, w.mod):
            interaction = await w.server.invoke_command(w.general, user, "shutdown")
            response = await interaction.wait_response()
            assert response["ephemeral"] and response["content"] == NOT_ADMIN
        dm = w.server.create_dm(w.alice)
        await send(bot, w.server, dm, w.alice, "still up?")
        await w.server.wait_for(lambda: w.contents(dm) == ["re: still up?"])
        assert not bot.is_closed()


class Slow(genbot.Genbot):
    """Its attend waits for `release`, or forever; records how each ended."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.ended: list[str] = []

    @genbot.gatekeep
    async def attend(self, channel: Any) -> None:
        self.started.set()
        try:
            await self.release.wait()
            await channel.send("finished")
            self.ended.append("finished")
        except asyncio.CancelledError:
            self.ended.append("cancelled")
            raise


@pytest.mark.parametrize("finishes", [True, False])
async def test_admin_shutdown_is_graceful_and_start_returns(finishes: bool) -> None:
    @genbot.streamer
    def echo(streams: list[Any]) -> None:
        for stream in streams:
            stream.write(stream.data)
            stream.close()

    async with world() as w:
        s = w.server
        bot = Slow(
            admins=[w.admin.id], streamers=[echo], guild_ready_timeout=0.05, shutdown_timeout=0.5
        )
        echo.start_thread()
        assert echo in active_streamers()
        task = asyncio.create_task(bot.start(s.token))
        try:
            await asyncio.wait_for(bot.wait_until_ready(), 10)
            dm = s.create_dm(w.alice)
            await send(bot, s, dm, w.alice, "take your time")
            await asyncio.wait_for(bot.started.wait(), 5)
            interaction = await s.invoke_command(w.general, w.admin, "shutdown")
            assert (await interaction.wait_response())["ephemeral"]
            # no new attends once shutting down
            await send(bot, s, s.create_dm(w.bob), w.bob, "too late")
            if finishes:
                bot.release.set()
            await asyncio.wait_for(task, 10)  # start() returns
            assert not echo.running  # closed by the bot that owns it
        finally:
            if not task.done():
                await bot.close()
                await asyncio.wait_for(task, 10)
            echo.close()
        assert bot.ended == (["finished"] if finishes else ["cancelled"])
        assert w.contents(dm) == (["finished"] if finishes else [])
        assert echo not in active_streamers()
        assert bot.is_closed()


class Polite(genbot.Genbot):
    texts = Texts(
        not_allowed="Members only, sorry.",
        pong="Pang!",
        pong_latency="Pang! ({ms:.0f} ms)",
        descriptions={"ping": "Is it up?"},
    )


async def test_a_subclass_overrides_what_the_commands_say() -> None:
    async with world() as w, run_bot(Polite(users={"blacklist": [w.bob.id]}, **FAST), w.server):
        s = w.server
        ping = await (await s.invoke_command(w.general, w.alice, "ping")).wait_response()
        assert ping["content"].startswith("Pang!")
        refused = await (await s.invoke_command(w.general, w.bob, "reset")).wait_response()
        assert refused["ephemeral"] and refused["content"] == "Members only, sorry."
        described = {c["name"]: c["description"] for c in s.commands()}
        assert described["ping"] == "Is it up?"
        assert described["reset"] == "Start afresh: the bot forgets everything before this"
    assert genbot.Genbot.texts.not_allowed == NOT_ALLOWED  # the base class keeps its texts


def test_adding_a_command_is_a_decorated_function() -> None:
    from genbot import commands

    @commands.builtin("usage-test")
    async def usage(interaction: commands.Interaction) -> None:
        """How much you used"""
        await interaction.response.send_message("0 tokens")

    try:
        bot = genbot.Genbot()
        command = bot.tree.get_command("usage-test")
        assert command is not None and command.description == "How much you used"
        with pytest.raises(ValueError, match="usage-test"):
            commands.builtin("usage-test")(usage)
    finally:
        del commands.BUILTIN["usage-test"]
    assert genbot.Genbot().tree.get_command("usage-test") is None
