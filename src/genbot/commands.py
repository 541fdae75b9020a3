"""The slash commands every `Genbot` has: ``/reset``, ``/ping``, ``/thread``, ``/shutdown``.

Refusals are ephemeral (only the user sees them). ``/reset`` answers with
:data:`genbot.context.RESET_MARKER`, a visible boundary no context reaches past.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from genbot.context import RESET_MARKER

if TYPE_CHECKING:
    from genbot.bot import Genbot

__all__ = ["install_commands"]

_log = logging.getLogger(__name__)

NOT_ALLOWED = "You may not chat with this bot here."
NOT_ADMIN = "Only the bot's admins can shut it down."

ThreadName = app_commands.Range[str, 1, 100]


async def _refuse(interaction: discord.Interaction, text: str) -> None:
    await interaction.response.send_message(text, ephemeral=True)


def install_commands(bot: Genbot) -> None:
    """Register the built-in commands on ``bot.tree``."""
    tree = bot.tree

    @tree.command(name="reset", description="Start afresh: the bot forgets everything before this")
    async def reset(interaction: discord.Interaction) -> None:
        if not bot.may_chat(interaction.user, interaction.channel):
            return await _refuse(interaction, NOT_ALLOWED)
        await interaction.response.send_message(
            RESET_MARKER, allowed_mentions=discord.AllowedMentions.none()
        )

    @tree.command(name="ping", description="Check that the bot is alive")
    async def ping(interaction: discord.Interaction) -> None:
        latency = bot.latency
        text = "Pong!" if latency != latency else f"Pong! ({latency * 1000:.0f} ms)"  # NaN: unknown
        await interaction.response.send_message(text)

    @tree.command(name="thread", description="Open a thread to chat with the bot")
    @app_commands.describe(name="The thread's name")
    async def thread(interaction: discord.Interaction, name: ThreadName) -> None:
        channel = interaction.channel
        if not isinstance(channel, discord.TextChannel):
            return await _refuse(interaction, "Threads can be opened in a server's text channels.")
        if not bot.may_chat(interaction.user, channel):
            return await _refuse(interaction, NOT_ALLOWED)
        # Two requests (rate limits may hold them up) before the answer: Discord drops an
        # interaction not acknowledged within 3 s, so acknowledge it first.
        await interaction.response.defer(ephemeral=True, thinking=True)
        opened = await channel.create_thread(name=name, type=discord.ChannelType.public_thread)
        await opened.add_user(interaction.user)
        await interaction.followup.send(f"Opened {opened.mention}.", ephemeral=True)

    @tree.command(name="shutdown", description="Shut the bot down (admins only)")
    async def shutdown(interaction: discord.Interaction) -> None:
        if not bot.is_admin(interaction.user):
            return await _refuse(interaction, NOT_ADMIN)
        await interaction.response.send_message("Shutting down.", ephemeral=True)
        _log.info("shutdown requested by %s (%s)", interaction.user, interaction.user.id)
        # not awaited here: close() must not wait for this interaction's own handler
        _background.add(task := asyncio.create_task(bot.close(), name="genbot: /shutdown"))
        task.add_done_callback(_background.discard)

    @tree.error
    async def on_command_error(
        interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        if isinstance(error, app_commands.CheckFailure):
            text = "You may not use this command here."
        else:
            _log.error(
                "command /%s failed",
                interaction.command and interaction.command.name,
                exc_info=error,
            )
            text = "Sorry, that failed."
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=True)
        else:  # deferred: fill in the "thinking..." message
            await interaction.followup.send(text, ephemeral=True)


#: Strong references to fire-and-forget tasks (asyncio keeps only weak ones).
_background: set[asyncio.Task[None]] = set()
