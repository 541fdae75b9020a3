"""Which incoming messages wake ``Genbot.attend``.

The default, in order (the first rule that applies decides):

1. the bot's own messages never wake it; other bots' messages only with ``allow_bots=True``;
2. only plain messages and replies wake it (no joins, pins, thread starters or other
   messages Discord makes itself);
3. a message starting with the ignore prefix (default ``"!"``) is invisible to the bot;
4. ``channels`` blacklist: nothing in a listed channel (or a thread under it) wakes the bot;
5. DMs always wake it;
6. ``channels`` whitelist: every message in a listed channel (or a thread under it) wakes it;
7. in a thread the bot created or was added to, every message wakes it;
8. anywhere else in a server, a message wakes it when it mentions the bot or replies to one of
   the bot's messages.

Whether the author may chat at all (``users``/``roles``) is checked separately by the bot.
Everything here is a pure function of an :class:`Incoming` snapshot, so it is testable without
Discord.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import discord

from genbot.access import AccessList

__all__ = ["CHAT_TYPES", "Incoming", "WakeRules", "incoming", "is_ignored"]

_log = logging.getLogger(__name__)

Place = Literal["dm", "thread", "channel"]

#: Messages people write (plain and replies), not ones Discord makes (joins, pins, commands...).
CHAT_TYPES = (discord.MessageType.default, discord.MessageType.reply)


def is_ignored(content: str, ignore_prefix: str | None) -> bool:
    """A message meant for humans only (``"! not for the bot"``)."""
    return bool(ignore_prefix and content.startswith(ignore_prefix))


@dataclass(frozen=True)
class Incoming:
    """The facts about a message that the wake rules look at."""

    author_id: int
    author_is_bot: bool
    content: str
    chat: bool  # a plain message or reply (not something Discord made itself)
    place: Place
    channel_id: int
    parent_id: int | None = None  # the channel a thread is in
    bot_in_thread: bool = False  # the bot created the thread or is a member of it
    mentions_bot: bool = False
    replies_to_bot: bool = False


@dataclass(frozen=True)
class WakeRules:
    """The configurable part of the wake rules (see the module docstring)."""

    channels: AccessList = field(default_factory=AccessList)
    ignore_prefix: str | None = "!"
    allow_bots: bool = False

    def _listed(self, ids: frozenset[int] | None, m: Incoming) -> bool:
        return ids is not None and (m.channel_id in ids or m.parent_id in ids)

    def wakes(self, m: Incoming, bot_id: int) -> bool:
        if m.author_id == bot_id or (m.author_is_bot and not self.allow_bots):
            return False
        if not m.chat or is_ignored(m.content, self.ignore_prefix):
            return False
        if self._listed(self.channels.blacklist, m):
            return False
        if m.place == "dm" or self._listed(self.channels.whitelist, m):
            return True
        if m.place == "thread" and m.bot_in_thread:
            return True
        return m.mentions_bot or m.replies_to_bot


def _place(channel: object) -> Place:
    if isinstance(channel, discord.Thread):
        return "thread"
    if isinstance(channel, (discord.DMChannel, discord.GroupChannel)):
        return "dm"
    if getattr(channel, "guild", None) is None and getattr(channel, "guild_id", None) is None:
        return "dm"
    return "channel"


def incoming(
    message: discord.Message,
    bot_id: int,
    lookup: Callable[[int, int], discord.Message | None] | None = None,
) -> Incoming:
    """Snapshot ``message``; ``lookup(channel_id, message_id)`` resolves replied-to messages
    that discord.py did not resolve itself."""
    channel = message.channel
    place = _place(channel)
    parent_id = channel.parent_id if isinstance(channel, discord.Thread) else None
    in_thread = isinstance(channel, discord.Thread) and (
        channel.owner_id == bot_id or channel.me is not None
    )
    replied: discord.Message | None = None
    ref = message.reference
    if ref is not None and ref.message_id is not None:
        resolved = ref.resolved if isinstance(ref.resolved, discord.Message) else None
        replied = resolved or ref.cached_message
        if replied is None and lookup is not None:
            replied = lookup(ref.channel_id, ref.message_id)
    return Incoming(
        author_id=message.author.id,
        author_is_bot=message.author.bot,
        content=message.content,
        chat=message.type in CHAT_TYPES,
        place=place,
        channel_id=channel.id,
        parent_id=parent_id,
        bot_in_thread=in_thread,
        mentions_bot=bot_id in message.raw_mentions
        or any(u.id == bot_id for u in message.mentions),
        replies_to_bot=replied is not None and replied.author.id == bot_id,
    )
