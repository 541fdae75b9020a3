"""The context window: what the bot sees of a channel, newest first, and the cache behind it.

:class:`MessageCache` keeps, per channel read so far, a *contiguous suffix* of the channel's
history: every message from some point up to the newest one. The first read of a channel fetches
its newest page with REST; from then on gateway events keep it exact (create, edit, delete, bulk
delete), and older messages are fetched with ``history(before=...)`` only when a context reads
past the cached suffix. So an active channel costs no REST request in the steady state and edits
and deletions show at once. Memory is bounded: ``max_messages`` per channel (the oldest are
dropped, to be fetched again if needed), ``max_channels`` channels (least recently used go).

A new gateway session (a fresh READY after a reconnect that could not RESUME) may have missed
events, so it drops every suffix (a sharded bot: the suffixes of that shard's channels, each
suffix knowing its channel's guild); the next read refills from the newest message. A RESUME
replays missed events and keeps the cache.

``/reset`` is a visible message in the channel: the bot posts :data:`RESET_MARKER` (as the
command's response) and a context stops at the newest message that is exactly that text and
authored by the bot.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, overload

import discord

from genbot.wake import CHAT_TYPES, is_ignored

if TYPE_CHECKING:
    from genbot.bot import Genbot

__all__ = ["RESET_MARKER", "Context", "MessageCache", "is_reset", "thread_starter", "visible"]

_log = logging.getLogger(__name__)

#: The text of the boundary message ``/reset`` posts.
RESET_MARKER = "\u2014 context reset \u2014"

_PAGE = 100  # Discord's largest history page


def is_reset(message: discord.Message, bot_id: int) -> bool:
    """The boundary a ``/reset`` left in the channel."""
    return message.author.id == bot_id and message.content.strip() == RESET_MARKER


def _eligible(message: discord.Message, bot: Genbot) -> bool | None:
    """``True``/``False`` when the kind of message decides; ``None`` when its author's access
    does."""
    if is_ignored(message.content, bot.wake_rules.ignore_prefix) or message.type not in CHAT_TYPES:
        return False
    if bot.user is not None and message.author.id == bot.user.id:
        return message.interaction_metadata is None  # not a command's response
    if message.author.bot and not bot.wake_rules.allow_bots:
        return False
    return None


def visible(message: discord.Message, bot: Genbot) -> bool:
    """Whether ``message`` belongs in a context: from a user allowed to chat (now, see
    :meth:`Genbot.may_chat`), or the bot's own; never ignored (prefix), control or command
    messages, nor system messages."""
    eligible = _eligible(message, bot)
    if eligible is not None:
        return eligible
    return bot.may_chat(message.author, message.channel)


class _History:
    """A contiguous suffix of one channel's history, oldest first."""

    __slots__ = ("complete", "guild_id", "ids", "messages", "pending")

    def __init__(self, guild_id: int | None = None) -> None:
        self.guild_id = guild_id  # None: a DM
        self.messages: list[discord.Message] = []
        self.ids: list[int] = []
        self.complete = False  # the suffix starts at the channel's first message
        # Edits (Message) and deletions (None) of messages outside the suffix seen while a
        # fetch is in flight, applied to what the fetch returns.
        self.pending: dict[int, discord.Message | None] | None = None

    def put(self, message: discord.Message) -> None:
        i = bisect.bisect_left(self.ids, message.id)
        if i < len(self.ids) and self.ids[i] == message.id:
            self.messages[i] = message
        else:
            self.ids.insert(i, message.id)
            self.messages.insert(i, message)

    def remove(self, message_id: int) -> bool:
        i = bisect.bisect_left(self.ids, message_id)
        if i < len(self.ids) and self.ids[i] == message_id:
            del self.ids[i], self.messages[i]
            return True
        return False

    def has(self, message_id: int) -> bool:
        i = bisect.bisect_left(self.ids, message_id)
        return i < len(self.ids) and self.ids[i] == message_id

    def newest_before(self, before: int | None) -> discord.Message | None:
        i = len(self.ids) if before is None else bisect.bisect_left(self.ids, before)
        return self.messages[i - 1] if i else None

    def covers(self, message_id: int) -> bool:
        """Every message after ``message_id`` is in the suffix."""
        return self.complete or (bool(self.ids) and self.ids[0] <= message_id)

    def trim(self, limit: int) -> None:
        if len(self.ids) > limit:
            del self.ids[: len(self.ids) - limit], self.messages[: len(self.messages) - limit]
            self.complete = False


class MessageCache:
    """Per-channel message cache fed by gateway events (see the module docstring)."""

    def __init__(self, *, max_messages: int = 500, max_channels: int = 500) -> None:
        self.max_messages = max_messages
        self.max_channels = max_channels
        self._history: OrderedDict[int, _History] = OrderedDict()
        self._locks: dict[int, asyncio.Lock] = {}
        self._generation = 0

    def _touch(self, channel_id: int, create: bool, guild_id: int | None = None) -> _History | None:
        h = self._history.get(channel_id)
        if h is None and create:
            h = self._history[channel_id] = _History(guild_id)
            while len(self._history) > self.max_channels:
                evicted, _ = self._history.popitem(last=False)
                self._locks.pop(evicted, None)
        if h is not None:
            self._history.move_to_end(channel_id)
        return h

    # -- gateway feed ------------------------------------------------------------------------
    def on_create(self, message: discord.Message) -> None:
        h = self._touch(message.channel.id, create=False)
        if h is not None:  # channels nobody read yet cost nothing: the first read fetches
            h.put(message)
            h.trim(self.max_messages)

    def on_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        h = self._history.get(payload.channel_id)
        if h is None:
            return
        updated: discord.Message | None = getattr(payload, "message", None)
        if updated is None:  # discord.py < 2.5: apply the partial update to our copy
            old = h.newest_before(payload.message_id + 1)
            if old is None or old.id != payload.message_id:
                return
            updated = copy.copy(old)
            updated._update(payload.data)
        if h.has(payload.message_id):
            h.put(updated)
        elif h.pending is not None:
            h.pending[payload.message_id] = updated

    def on_delete(self, channel_id: int, message_ids: set[int] | list[int]) -> None:
        h = self._history.get(channel_id)
        if h is None:
            return
        for message_id in message_ids:
            if not h.remove(message_id) and h.pending is not None:
                h.pending[message_id] = None

    def invalidate(self, where: Callable[[int | None], bool] | None = None) -> None:
        """Forget everything: events may have been missed (a new gateway session).

        Parameters
        ----------
        where:
            Forget only the channels whose guild id (``None``: a DM) it accepts, e.g. those of
            one shard.
        """
        if where is None:
            self._history.clear()
        else:
            for channel_id in [c for c, h in self._history.items() if where(h.guild_id)]:
                del self._history[channel_id]
        self._generation += 1

    # -- reads -------------------------------------------------------------------------------
    def get(self, channel_id: int, message_id: int) -> discord.Message | None:
        h = self._history.get(channel_id)
        if h is None:
            return None
        m = h.newest_before(message_id + 1)
        return m if m is not None and m.id == message_id else None

    def cached(self, channel_id: int) -> list[discord.Message]:
        """The cached suffix of a channel, oldest first (a copy)."""
        h = self._history.get(channel_id)
        return [] if h is None else list(h.messages)

    async def next_older(
        self, channel: discord.abc.Messageable, before: int | None
    ) -> discord.Message | None:
        """The newest message older than ``before`` (``None``: the newest), or ``None`` at the
        channel's start. Fetches a page of history only when the cache does not reach back."""
        channel_id: int = channel.id  # type: ignore[attr-defined]
        while True:
            h = self._touch(channel_id, create=False)
            if h is not None:
                found = h.newest_before(before)
                if found is not None:
                    return found
                if h.complete:
                    return None
            await self._fetch_older(channel, channel_id, h, h.ids[0] if h and h.ids else None)

    async def newer_than(
        self, channel: discord.abc.Messageable, after: int
    ) -> list[discord.Message]:
        """Messages newer than ``after``, oldest first; from the cache when it covers them."""
        h = self._history.get(channel.id)  # type: ignore[attr-defined]
        if h is not None and h.covers(after):
            i = bisect.bisect_right(h.ids, after)
            return h.messages[i:]
        return [
            m
            async for m in channel.history(
                limit=_PAGE, after=discord.Object(after), oldest_first=True
            )
        ]

    async def _fetch_older(
        self,
        channel: discord.abc.Messageable,
        channel_id: int,
        seen: _History | None,
        seen_oldest: int | None,
    ) -> None:
        lock = self._locks.setdefault(channel_id, asyncio.Lock())
        async with lock:
            h = self._history.get(channel_id)
            oldest = h.ids[0] if h is not None and h.ids else None
            if h is not seen or oldest != seen_oldest or (h is not None and h.complete):
                return  # the cache changed while we waited: let the caller look again
            h = self._touch(channel_id, create=True, guild_id=_guild_id(channel))
            assert h is not None
            generation = self._generation
            h.pending = {}
            try:
                before = discord.Object(oldest) if oldest is not None else None
                batch = [m async for m in channel.history(limit=_PAGE, before=before)]
                if generation != self._generation or self._history.get(channel_id) is not h:
                    return  # invalidated meanwhile: the batch may not join the new suffix
                for message in batch:
                    if not h.has(message.id):  # what we hold is kept fresh by events
                        h.put(message)
                for message_id, update in h.pending.items():
                    if update is None:
                        h.remove(message_id)
                    elif h.has(message_id):
                        h.put(update)
                if len(batch) < _PAGE:
                    h.complete = True
            finally:
                h.pending = None


def _guild_id(channel: object) -> int | None:
    """The id of the guild ``channel`` is in; ``None`` for a DM (or a user as a messageable)."""
    if isinstance(channel, (discord.abc.User, discord.DMChannel, discord.GroupChannel)):
        return None
    guild = getattr(channel, "guild", None)
    guild_id = guild.id if guild is not None else getattr(channel, "guild_id", None)
    return guild_id if isinstance(guild_id, int) else None


def thread_starter(message: discord.Message, bot: Genbot) -> discord.Message | None:
    """``message`` as a context shows it: a thread's THREAD_STARTER_MESSAGE (Discord's first
    message of a thread started from a message) is the message it started from, which lives in
    the parent channel; ``None`` when that one is gone. Any other message is itself.

    The starter comes from the message cache (kept exact by events), else discord.py's, else
    the copy Discord sent along (``reference.resolved``): never a request.

    Parameters
    ----------
    message:
        A message read from a channel's history.
    bot:
        The bot whose caches are looked at.
    """
    if message.type != discord.MessageType.thread_starter_message:
        return message
    ref = message.reference
    if ref is None or ref.message_id is None or ref.channel_id is None:
        return None
    starter = bot.message_cache.get(ref.channel_id, ref.message_id) or ref.cached_message
    if starter is None and isinstance(ref.resolved, discord.Message):
        starter = ref.resolved
    return starter


class Context:
    """The context window of a channel: ``async for msg in ctx`` yields, newest first, at most
    ``limit`` messages the bot may see, stopping at the latest ``/reset``. In a thread started
    from a message, that message (in the parent channel) is the oldest (:func:`thread_starter`).

    What was yielded is cached: ``ctx[0]`` is the newest, ``len(ctx)``, ``bool(ctx)``, and
    iterating again serves the cache (and continues where a ``break`` left off).
    ``await ctx.current()`` tells whether no new visible message from someone other than the
    bot arrived since the context was first read.

    Who may be seen is decided when a message is read, whatever the cache state: an author
    whose roles decide and whom no cache knows is looked up (:meth:`Genbot.look_up`), at most
    ``max_lookups`` times per context; past that such authors stay hidden.
    """

    #: Member look-ups (REST requests) one context may make; see the class docstring.
    max_lookups = 25

    def __init__(self, bot: Genbot, channel: discord.abc.Messageable, limit: int = 16) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self.bot = bot
        self.channel = channel
        self.limit = limit
        self._items: list[discord.Message] = []
        self._cursor: int | None = None  # id of the oldest raw message examined
        self._anchor: int | None = None  # the newest message when reading began
        self._started = False
        self._exhausted = False
        self._lookups = 0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<Context channel={getattr(self.channel, 'id', None)} cached={len(self._items)}>"

    def __aiter__(self) -> AsyncIterator[discord.Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[discord.Message]:
        i = 0
        while i < len(self._items) or await self._advance():
            yield self._items[i]
            i += 1

    async def _advance(self) -> bool:
        """Cache one more visible message; ``False`` when there is none."""
        async with self._lock:
            cache = self.bot.message_cache
            bot_id = self.bot.user.id if self.bot.user is not None else 0
            if not self._started:
                newest = await cache.next_older(self.channel, None)
                self._anchor = newest.id if newest is not None else 0
                self._started = True
            while not self._exhausted and len(self._items) < self.limit:
                raw = await cache.next_older(self.channel, self._cursor)
                if raw is None or is_reset(raw, bot_id):
                    break
                self._cursor = raw.id
                shown = thread_starter(raw, self.bot)
                if shown is not None and await self._visible(shown):
                    self._items.append(shown)
                    return True
            self._exhausted = True
            return False

    async def current(self) -> bool:
        """``False`` when a new visible message from someone other than the bot arrived after
        the context was first read (reads it first if it was not)."""
        if not self._started:
            await self._advance()
        assert self._anchor is not None
        bot_id = self.bot.user.id if self.bot.user is not None else 0
        for message in await self.bot.message_cache.newer_than(self.channel, self._anchor):
            if message.author.id != bot_id and await self._visible(message):
                return False
        return True

    async def _visible(self, message: discord.Message) -> bool:
        eligible = _eligible(message, self.bot)
        if eligible is not None:
            return eligible
        if self._lookups < self.max_lookups and await self.bot.look_up(
            message.author, message.channel
        ):
            self._lookups += 1
        return self.bot.may_chat(message.author, message.channel)

    @overload
    def __getitem__(self, index: int) -> discord.Message: ...
    @overload
    def __getitem__(self, index: slice) -> list[discord.Message]: ...
    def __getitem__(self, index: Any) -> Any:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)
