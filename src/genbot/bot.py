"""`Genbot`: a `discord.Client` that calls `attend(channel)` when a message needs an answer."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from typing import Any

import discord
from discord import app_commands

from genbot.access import Access, AccessList, AccessSpec
from genbot.commands import install_commands
from genbot.context import Context, MessageCache
from genbot.gatekeep import GateHandle, running
from genbot.output import SAFE_MENTIONS
from genbot.wake import WakeRules, incoming

__all__ = ["Genbot", "default_intents"]

_log = logging.getLogger(__name__)

Channel = discord.abc.Messageable


def default_intents() -> discord.Intents:
    """What a chat bot needs: the defaults plus message content and members (both privileged:
    enable them in the developer portal). Members keep role-based access exact."""
    intents = discord.Intents.default()
    intents.message_content = True
    intents.members = True
    return intents


class Genbot(discord.Client):
    """Override :meth:`attend` to answer; see the README for which messages wake it.

    Keyword arguments: ``users``, ``roles``, ``admins`` (access lists), ``channels`` (whitelist:
    channels where every message wakes the bot; blacklist: where nothing does),
    ``ignore_prefix`` (messages starting with it are invisible), ``allow_bots`` (other bots'
    messages wake it and show in contexts), ``sync_commands`` (sync the slash commands at
    start-up), ``shutdown_timeout`` (seconds running attends get to finish on close before they
    are cancelled), ``close_streamers`` (on close, also close every running
    :class:`genbot.Streamer` of the process and its worker; pass ``False`` when the streamers
    outlive the bot, e.g. several bots sharing one model), ``intents`` (default:
    :func:`default_intents`); anything else goes to
    :class:`discord.Client` (``allowed_mentions`` defaults to ``genbot.output.SAFE_MENTIONS``).
    """

    def __init__(
        self,
        *,
        users: AccessSpec = None,
        roles: AccessSpec = None,
        admins: AccessSpec = None,
        channels: AccessSpec = None,
        ignore_prefix: str | None = "!",
        allow_bots: bool = False,
        sync_commands: bool = True,
        shutdown_timeout: float = 10.0,
        close_streamers: bool = True,
        intents: discord.Intents | None = None,
        **client_kwargs: Any,
    ) -> None:
        client_kwargs.setdefault("allowed_mentions", SAFE_MENTIONS)
        super().__init__(
            intents=intents if intents is not None else default_intents(), **client_kwargs
        )
        self.access = Access(users, roles, admins)
        self.wake_rules = WakeRules(
            AccessList.parse(channels, "channels"), ignore_prefix, allow_bots
        )
        self.message_cache = MessageCache()
        self.sync_commands = sync_commands
        self.shutdown_timeout = shutdown_timeout
        self.close_streamers = close_streamers
        self.tree: app_commands.CommandTree[Genbot] = app_commands.CommandTree(self)
        install_commands(self)
        self._attends: set[asyncio.Task[Any]] = set()
        self._shutdown: asyncio.Task[None] | None = None

    # -- the user-facing API ---------------------------------------------------------------------
    async def attend(self, channel: Channel) -> None:
        """Answer in ``channel``; called when a message there wakes the bot. Override it.

        Each waking message calls it once; decorate it with ``@genbot.gatekeep`` to run at most
        one per channel at a time. Exceptions go to :meth:`on_error` (logged by default).
        """

    def context(self, channel: Channel, limit: int = 16) -> Context:
        """The context window of ``channel``: see :class:`genbot.Context`."""
        return Context(self, channel, limit)

    def may_chat(self, user: discord.abc.User, channel: Channel | None) -> bool:
        """Whether ``user`` may chat with the bot in ``channel`` (the access rules)."""
        guild = getattr(channel, "guild", None)
        if guild is None:
            return self.access.may_chat(user.id, None)
        member = guild.get_member(user.id)
        if member is None and isinstance(user, discord.Member):
            member = user
        role_ids = [role.id for role in member.roles] if member is not None else []
        return self.access.may_chat(user.id, role_ids)

    def is_admin(self, user: discord.abc.User) -> bool:
        return self.access.is_admin(user.id)

    @property
    def closing(self) -> bool:
        """Shutting down: no new attends start."""
        return self._shutdown is not None

    def attending(self) -> list[asyncio.Task[Any]]:
        """Attend runs in progress (including gatekept runs started from anywhere)."""
        return [t for t in {*self._attends, *running(self)} if not t.done()]

    # -- discord.py hooks ------------------------------------------------------------------------
    async def setup_hook(self) -> None:
        if self.sync_commands:
            await self.tree.sync()

    def dispatch(self, event: str, /, *args: Any, **kwargs: Any) -> None:
        """Feed the message cache and wake ``attend`` before any ``on_*`` handler runs, so both
        keep working when a subclass overrides ``on_message`` without calling ``super()``.

        This runs inside discord.py's gateway parser, where an exception would end ``start()``:
        a failure here is logged and the event still reaches the handlers."""
        try:
            self._observe(event, args)
        except Exception:
            _log.exception("handling %s failed; the bot carries on", event)
        super().dispatch(event, *args, **kwargs)

    def _observe(self, event: str, args: tuple[Any, ...]) -> None:
        cache = self.message_cache
        if event == "message":
            cache.on_create(args[0])
            self._maybe_attend(args[0])
        elif event == "raw_message_edit":
            cache.on_edit(args[0])
        elif event == "raw_message_delete":
            cache.on_delete(args[0].channel_id, [args[0].message_id])
        elif event == "raw_bulk_message_delete":
            cache.on_delete(args[0].channel_id, args[0].message_ids)
        elif event == "connect":  # a new gateway session: events may have been missed
            cache.invalidate()

    def _maybe_attend(self, message: discord.Message) -> None:
        if self.closing or self.user is None:
            return
        bot_id = self.user.id
        if not self.wake_rules.wakes(incoming(message, bot_id, self.message_cache.get), bot_id):
            return
        if not self.may_chat(message.author, message.channel):
            return
        self._start_attend(message.channel)

    def _start_attend(self, channel: Channel) -> None:
        try:
            result: Any = self.attend(channel)
        except Exception:
            _log.exception("attend(%r) failed before it started", channel)
            return
        task: asyncio.Task[Any] | None
        if isinstance(result, GateHandle):
            task = result.task
        elif inspect.isawaitable(result):
            task = asyncio.create_task(self._run_attend(result, channel), name="genbot: attend")
        else:
            return
        if task is not None and not task.done():
            self._attends.add(task)
            task.add_done_callback(self._attends.discard)

    async def _run_attend(self, run: Awaitable[Any], channel: Channel) -> None:
        try:
            await run
        except Exception:
            await self._report("attend", channel)

    async def _report(self, event: str, *args: Any) -> None:
        """Inside ``except``: discord.py's error path (``on_error``), never fatal."""
        try:
            await self.on_error(event, *args)
        except Exception:
            _log.exception("on_error failed while handling an error in %s", event)

    # -- shutdown --------------------------------------------------------------------------------
    def clear(self) -> None:
        """discord.py's "re-open after close": attends may start again."""
        super().clear()
        self._shutdown = None
        self.message_cache.invalidate()

    async def close(self) -> None:
        """Graceful: no new attends; running ones get ``shutdown_timeout`` seconds, then are
        cancelled; active streamers are closed; then discord.py closes the connection."""
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(
                self._wind_down(asyncio.current_task()), name="genbot: shutdown"
            )
        try:
            await asyncio.shield(self._shutdown)
        finally:
            await super().close()

    async def _wind_down(self, caller: asyncio.Task[Any] | None) -> None:
        tasks = {t for t in self.attending() if t is not caller and not t.done()}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.shutdown_timeout)
            for task in pending:
                task.cancel()
            if pending:
                _log.warning(
                    "cancelled %d attend(s) still running after %.1f s",
                    len(pending),
                    self.shutdown_timeout,
                )
                await asyncio.wait(pending, timeout=self.shutdown_timeout)
        if self.close_streamers:
            await self._close_streamers()

    async def _close_streamers(self) -> None:
        from genbot.streaming import active_streamers

        async def close(streamer: Any) -> None:
            try:
                await asyncio.wait_for(asyncio.to_thread(streamer.close), self.shutdown_timeout)
            except Exception:
                _log.exception("closing %r failed", streamer)

        await asyncio.gather(*(close(streamer) for streamer in active_streamers()))
