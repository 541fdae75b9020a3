"""Discord output: what the bot's messages may ping, streamed replies and message splitting."""

from __future__ import annotations

import discord

__all__ = ["SAFE_MENTIONS"]

#: A model's text must never mass-ping a server: users may be pinged, @everyone/@here and roles not.
SAFE_MENTIONS = discord.AllowedMentions(everyone=False, roles=False, users=True, replied_user=True)
