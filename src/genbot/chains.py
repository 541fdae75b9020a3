"""Reply chains: the context of ``context_mode = "reply_chain"`` (llmcord's model).

The context of a question is the chain of messages it belongs to, followed back from the
question: each message's parent is (:func:`parent`)

1. the message it replies to (a Discord reply in the same channel), else
2. for a message of the bot's, the bot's message right before it, when that is the previous
   part of the same long reply (a reply's continuations do not reply to anything), else
3. for a message that does not mention the bot, the message right before it in the channel
   when that is by the same author (one question sent as several messages) or, in a DM or a
   thread, by the bot (a conversation that goes on without replies);

else the chain ends. So replying to an older message branches the conversation from there, and
the channel's other messages stay out.

The chain is read from the channel's message cache (:class:`genbot.context.MessageCache`, the one
channel histories use), so a warm chain costs no REST request; a cold one fetches the channel's
history pages back to its oldest message (at most :attr:`ReplyChain.max_scan` messages back,
which is also how far back a chain reaches). What may be seen is decided as for channel
history (:class:`genbot.context.Context`'s checks: access rules, the ignore prefix, command and
system messages): a hidden message is left out and the chain goes on through it. ``/reset``
applies too: the chain stops at the channel's latest reset marker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord

from genbot.context import Context, is_reset, thread_starter

if TYPE_CHECKING:
    from genbot.bot import Genbot

__all__ = ["Link", "ReplyChain", "link", "parent"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Link:
    """The facts about a message that decide its parent in a chain."""

    id: int
    author_id: int
    reply_to: int | None = None  # the message it replies to, in the same channel
    mentions_bot: bool = False


def link(message: discord.Message, bot_id: int) -> Link:
    """The :class:`Link` of ``message`` (a reply to another channel counts as none).

    Parameters
    ----------
    message:
        The message.
    bot_id:
        The bot's user id.
    """
    ref = message.reference
    same_channel = ref is not None and ref.channel_id in (None, message.channel.id)
    return Link(
        id=message.id,
        author_id=message.author.id,
        reply_to=ref.message_id if ref is not None and same_channel else None,
        mentions_bot=bot_id in message.raw_mentions,
    )


def parent(message: Link, previous: Link | None, bot_id: int, conversation: bool) -> int | None:
    """The id of ``message``'s parent in its chain (see the module docstring), or ``None``.

    Parameters
    ----------
    message:
        The message.
    previous:
        The message right before it in the channel (``None``: none, or not known).
    bot_id:
        The bot's user id.
    conversation:
        The place is a DM or a thread, where a conversation goes on without replies.
    """
    if message.reply_to is not None:
        return message.reply_to
    if previous is None:
        return None
    if message.author_id == bot_id:
        return previous.id if previous.author_id == bot_id else None
    if message.mentions_bot:
        return None
    if previous.author_id == message.author_id or (conversation and previous.author_id == bot_id):
        return previous.id
    return None


class ReplyChain(Context):
    """The reply chain of ``question`` as a :class:`genbot.context.Context`: ``async for`` yields
    its messages the bot may see, newest first (the question first), at most ``limit``.

    Parameters
    ----------
    bot:
        The bot.
    channel:
        The channel (or thread, or DM) of the question.
    question:
        The message the chain starts from.
    limit:
        The most messages yielded.

    Raises
    ------
    ValueError
        When ``limit`` is negative.
    """

    #: The most messages of the channel read (newest first) to follow a chain and to find the
    #: latest ``/reset``: a chain reaches no further back.
    max_scan = 1000

    def __init__(
        self,
        bot: Genbot,
        channel: discord.abc.Messageable,
        question: discord.Message,
        limit: int = 16,
    ) -> None:
        super().__init__(bot, channel, limit)
        # current(): whether nothing new was said in the channel since the question
        self._started, self._anchor = True, question.id
        self._next: discord.Message | None = question
        self._scanned = 0
        self._scan_cursor: int | None = None  # the oldest channel message read so far
        self._reset: int | None = None  # the latest reset marker's id, once read
        self._conversation = isinstance(
            channel, (discord.Thread, discord.DMChannel, discord.GroupChannel)
        )

    async def _advance(self) -> bool:
        async with self._lock:
            while not self._exhausted and len(self._items) < self.limit:
                message = self._next
                if message is None or not await self._within(message.id):
                    break
                self._next = await self._parent(message)
                if await self._visible(message):
                    self._items.append(message)
                    return True
            self._exhausted = True
            return False

    async def _within(self, message_id: int) -> bool:
        """Read the channel back to ``message_id`` (from the cache when it reaches back): whether
        the message is newer than the latest reset and within :attr:`max_scan`."""
        cache = self.bot.message_cache
        bot_id = self.bot.user.id if self.bot.user is not None else 0
        while self._reset is None and (self._scan_cursor is None or self._scan_cursor > message_id):
            if self._scanned >= self.max_scan:
                _log.info("a reply chain reached %d messages back; it ends there", self.max_scan)
                return False
            raw = await cache.next_older(self.channel, self._scan_cursor)
            if raw is None:
                self._scan_cursor = 0
                break
            self._scanned += 1
            self._scan_cursor = raw.id
            if is_reset(raw, bot_id):
                self._reset = raw.id
        return self._reset is None or message_id > self._reset

    async def _parent(self, message: discord.Message) -> discord.Message | None:
        bot_id = self.bot.user.id if self.bot.user is not None else 0
        cache = self.bot.message_cache
        channel_id: int = self.channel.id  # type: ignore[attr-defined]
        previous: discord.Message | None = None
        if message.reference is None and message.channel.id == channel_id:
            if not await self._within(message.id - 1):
                return None
            previous = await cache.next_older(self.channel, message.id)
            if previous is not None and previous.type == discord.MessageType.thread_starter_message:
                return thread_starter(previous, self.bot)  # a thread goes on from its starter
        found = parent(
            link(message, bot_id),
            None if previous is None else link(previous, bot_id),
            bot_id,
            self._conversation,
        )
        if found is None:
            return None
        if previous is not None and found == previous.id:
            return previous
        if not await self._within(found):
            return None
        return cache.get(channel_id, found)  # read into the cache by _within; None: deleted
