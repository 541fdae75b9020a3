"""Slash commands through discord.py's CommandTree: sync, invoke, respond, defer, followups."""

from __future__ import annotations

import discord
import pytest
from discord import app_commands
from loopback_world import Recorder, World

from genbot.testing import run_bot


class CommandBot(Recorder):
    def __init__(self, guild_id: int | None = None) -> None:
        super().__init__()
        self.tree = app_commands.CommandTree(self)
        self.guild_id = guild_id
        self.errors: list[Exception] = []

        @self.tree.command(description="Answer at once")
        async def ping(interaction: discord.Interaction, word: str = "pong") -> None:
            await interaction.response.send_message(word)

        @self.tree.command(description="Answer only to the caller")
        async def whisper(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("psst", ephemeral=True)

        @self.tree.command(description="Think, then answer")
        async def slow(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            await interaction.followup.send("done thinking")
            await interaction.followup.send("one more thing")
            original = await interaction.original_response()
            await original.edit(content="done thinking (edited)")

        @self.tree.command(description="Answer twice")
        async def twice(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("once")
            try:
                await interaction.response.send_message("twice")
            except discord.InteractionResponded as error:
                self.errors.append(error)
            try:
                await self.http.request(
                    discord.http.Route(
                        "POST",
                        "/interactions/{interaction_id}/{token}/callback",
                        interaction_id=interaction.id,
                        token=interaction.token,
                    ),
                    json={"type": 4, "data": {"content": "again"}},
                )
            except discord.HTTPException as error:
                self.errors.append(error)

        @self.tree.command(description="Say, then unsay")
        async def oops(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("regret")
            await interaction.delete_original_response()

        @self.tree.command(description="Who is it?")
        async def who(interaction: discord.Interaction, user: discord.User) -> None:
            await interaction.response.send_message(f"that is {user.name}")

        settings = app_commands.Group(name="settings", description="Settings")

        @settings.command(name="set", description="Set a value")
        async def set_value(interaction: discord.Interaction, key: str, value: int) -> None:
            await interaction.response.send_message(f"{key}={value + 1}")

        self.tree.add_command(settings)

    async def setup_hook(self) -> None:
        if self.guild_id is None:
            await self.tree.sync()
        else:
            guild = discord.Object(self.guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)


async def test_global_sync_and_answers(world: World) -> None:
    server = world.server
    bot = CommandBot()
    async with run_bot(bot, server):
        names = {c["name"] for c in server.commands()}
        assert names == {"ping", "whisper", "slow", "twice", "who", "oops", "settings"}
        assert server.request_count("PUT", "/applications/{application_id}/commands") == 1
        fetched = await bot.tree.fetch_commands()
        assert {c.name for c in fetched} == names

        ping = await server.invoke_command(world.channel, world.alice, "ping", {"word": "hi"})
        response = await ping.wait_response()
        assert (response["kind"], response["type"], response["content"]) == ("callback", 4, "hi")
        assert not response["ephemeral"]
        visible = server.bot_messages(world.channel)[-1]
        assert visible["content"] == "hi" and visible["interaction_metadata"]["name"] == "ping"

        whisper = await server.invoke_command(world.channel, world.alice, "whisper")
        response = await whisper.wait_response()
        assert response["ephemeral"] and response["content"] == "psst"
        assert all(m["content"] != "psst" for m in server.messages(world.channel))

        who = await server.invoke_command(world.channel, world.alice, "who", {"user": world.bob})
        assert (await who.wait_response())["content"] == "that is bob"

        oops = await server.invoke_command(world.channel, world.alice, "oops")
        assert (await oops.wait_response(index=1))["kind"] == "delete"
        assert all(m["content"] != "regret" for m in server.messages(world.channel))

        setting = await server.invoke_command(
            world.channel, world.alice, "settings set", {"key": "k", "value": 41}
        )
        assert (await setting.wait_response())["content"] == "k=42"
        with pytest.raises(LookupError):
            await server.invoke_command(world.channel, world.alice, "settings nope")

        dm = server.create_dm(world.bob)
        in_dm = await server.invoke_command(dm, world.bob, "ping")
        assert (await in_dm.wait_response())["content"] == "pong"
        assert server.bot_messages(dm)[-1]["content"] == "pong"


async def test_defer_followups_and_original_edits(world: World) -> None:
    server = world.server
    bot = CommandBot()
    async with run_bot(bot, server):
        slow = await server.invoke_command(world.channel, world.alice, "slow")
        deferred = await slow.wait_response()
        assert (deferred["type"], deferred["message"]["flags"]) == (5, 128)
        await slow.wait_response(index=3)
        kinds = [(r["kind"], r["content"]) for r in slow.responses]
        assert kinds[1:] == [
            ("followup", "done thinking"),
            ("followup", "one more thing"),
            ("edit", "done thinking (edited)"),
        ]
        contents = [m["content"] for m in server.bot_messages(world.channel)]
        assert contents == ["done thinking (edited)", "one more thing"]
        assert slow.original is not None and slow.original["flags"] == 0


async def test_second_acknowledgement_is_refused(world: World) -> None:
    server = world.server
    bot = CommandBot()
    async with run_bot(bot, server):
        twice = await server.invoke_command(world.channel, world.alice, "twice")
        await twice.wait_response()
        await server.wait_for(
            lambda: (
                server.request_count(
                    "POST", "/interactions/{interaction_id}/{interaction_token}/callback"
                )
                == 2
            )
        )
        while len(bot.errors) < 2:
            await bot.wait_for("app_command_completion", timeout=5)
        assert isinstance(bot.errors[0], discord.InteractionResponded)
        assert isinstance(bot.errors[1], discord.HTTPException)
        assert bot.errors[1].code == 40060
        assert [r["content"] for r in twice.responses] == ["once"]


async def test_guild_commands_and_unknown_commands(world: World) -> None:
    server = world.server
    bot = CommandBot(guild_id=world.guild.id)
    async with run_bot(bot, server):
        assert server.commands() == []
        assert {c["name"] for c in server.commands(world.guild)} >= {"ping"}
        ping = await server.invoke_command(world.channel, world.bob, "ping")
        assert (await ping.wait_response())["content"] == "pong"
        with pytest.raises(LookupError):
            await server.invoke_command(world.channel, world.bob, "nope")
        dm = server.create_dm(world.bob)
        with pytest.raises(LookupError):
            await server.invoke_command(dm, world.bob, "ping")
