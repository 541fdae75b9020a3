"""`Genbot`: a `discord.Client` that calls `attend(channel)` when a message needs an answer."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import discord
from discord import app_commands

from genbot import cluster
from genbot.access import UNKNOWN_ROLES, Access, AccessList, AccessSpec, MemberRoles, Roles
from genbot.commands import Texts, install_commands
from genbot.context import Context, MessageCache
from genbot.gatekeeping import GateHandle, running
from genbot.metrics import Metrics
from genbot.output import SAFE_MENTIONS
from genbot.reload import ReloadError
from genbot.wake import WakeRules, incoming

if TYPE_CHECKING:
    from genbot.streaming import Streamer

__all__ = ["Genbot", "ShardedGenbot", "default_intents"]

_log = logging.getLogger(__name__)

Channel = discord.abc.Messageable
#: Where someone may or may not chat: a channel, or ``None`` when not known.
Where = discord.abc.Messageable | discord.abc.GuildChannel | None

S = TypeVar("S", bound="Streamer")
G = TypeVar("G", bound="Genbot")


def default_intents() -> discord.Intents:
    """What a chat bot needs: the defaults plus message content and members (both privileged:
    enable them in the developer portal). Members keep role-based access exact and free."""
    intents = discord.Intents.default()
    intents.message_content = True
    intents.members = True
    return intents


#: A place the bot cannot tell (a partial channel it has not cached): a user may chat there only
#: when they may both in DMs and in a server whose roles they hold are unknown.
_UNKNOWN_PLACE: Final = "unknown"
Place = discord.Guild | Literal["unknown"] | None  # None: a DM
_USERS = (discord.User, discord.Member, discord.ClientUser)


class Genbot(discord.Client):
    """Override :meth:`attend` to answer; see the README for which messages wake it.

    Parameters
    ----------
    users, roles, admins:
        Access lists (see :mod:`genbot.access`): who may chat, and who administers the bot.
    channels:
        Whitelist: channels where every message wakes the bot; blacklist: where nothing does.
    ignore_prefix:
        Messages starting with it are invisible to the bot (``None``: none are).
    allow_bots:
        Other bots' messages wake it and show in contexts.
    sync_commands:
        Sync the slash commands at start-up.
    shutdown_timeout:
        Seconds running attends get to finish on close before they are cancelled; each owned
        streamer gets twice that to close (see :meth:`close`).
    streamers:
        The :class:`genbot.Streamer` objects this bot owns: closed with it (see :meth:`own`).
    close_streamers:
        ``False``: close none of them (e.g. when they outlive the bot).
    member_ttl:
        Seconds the roles of a member discord.py does not cache are trusted (see
        :meth:`may_chat`).
    shard_count, shard_ids:
        Run as discord.py's :class:`~discord.AutoShardedClient` (the bot is then a
        :class:`ShardedGenbot`): ``shard_count`` shards in all, of which this process runs
        ``shard_ids`` (default: all of them). Only the process holding shard 0 syncs the slash
        commands. Without either, one unsharded connection.
    cluster_redis:
        A Redis URL: take a per-bucket identify lease there before each IDENTIFY (see
        :class:`genbot.cluster.RedisIdentifyLock`), so processes starting together keep
        Discord's identify rate limit. Needs ``genbot[cluster]``.
    metrics_port, metrics_host:
        Serve :attr:`metrics` (a :class:`genbot.metrics.Metrics`) there while the bot runs;
        port ``0``: do not (they are kept all the same).
    intents:
        Default: :func:`default_intents`.
    client_kwargs:
        Go to :class:`discord.Client` (``allowed_mentions`` defaults to
        ``genbot.output.SAFE_MENTIONS``).

    Raises
    ------
    TypeError, ValueError
        An access list that does not parse (the message names it), a negative
        or non-finite ``shutdown_timeout``, a ``member_ttl`` that is not a positive number, or
        shard settings :func:`genbot.cluster.check_shards` refuses, or a bad ``metrics_port`` /
        ``metrics_host``.
    RuntimeError
        ``cluster_redis`` without the ``redis`` package.

    What the built-in slash commands say is ``texts`` (a :class:`genbot.commands.Texts`):
    override it as a class attribute of a subclass.
    """

    texts: Texts = Texts()

    def __new__(cls: type[G], *args: Any, **kwargs: Any) -> G:
        # Asking for shards makes the bot (of any subclass) an AutoShardedClient too.
        sharding = kwargs.get("shard_count") is not None or kwargs.get("shard_ids") is not None
        return super().__new__(sharded_class(cls) if sharding else cls)

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
        streamers: Iterable[Streamer] = (),
        close_streamers: bool = True,
        member_ttl: float = 600.0,
        shard_count: int | None = None,
        shard_ids: list[int] | None = None,
        cluster_redis: str | None = None,
        intents: discord.Intents | None = None,
        metrics_port: int = 0,
        metrics_host: str = "127.0.0.1",
        **client_kwargs: Any,
    ) -> None:
        if not (math.isfinite(shutdown_timeout) and shutdown_timeout >= 0):
            raise ValueError(f"shutdown_timeout must be >= 0 seconds, got {shutdown_timeout!r}")
        if not (math.isfinite(member_ttl) and member_ttl > 0):
            raise ValueError(f"member_ttl must be > 0 seconds, got {member_ttl!r}")
        shard_ids = cluster.check_shards(shard_count, shard_ids)
        if shard_count is not None or shard_ids is not None:
            client_kwargs.update(shard_count=shard_count, shard_ids=shard_ids)
        client_kwargs.setdefault("allowed_mentions", SAFE_MENTIONS)
        super().__init__(
            intents=intents if intents is not None else default_intents(), **client_kwargs
        )
        self.metrics = Metrics(port=metrics_port, host=metrics_host)
        self.metrics.watch(self)
        self.access = Access(users, roles, admins)
        self.wake_rules = WakeRules(
            AccessList.parse(channels, "channels"), ignore_prefix, allow_bots
        )
        self.message_cache = MessageCache()
        self.member_roles = MemberRoles(ttl=member_ttl)
        self.sync_commands = sync_commands
        self.shutdown_timeout = shutdown_timeout
        self.close_streamers = close_streamers
        self._streamers: list[Streamer] = []
        for streamer in streamers:
            self.own(streamer)
        self.tree: app_commands.CommandTree[Genbot] = app_commands.CommandTree(self)
        install_commands(self)
        self._attends: set[asyncio.Task[Any]] = set()
        self._lookups: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._shutdown: asyncio.Task[None] | None = None
        self.identify_lock = (
            None if cluster_redis is None else cluster.RedisIdentifyLock(cluster_redis)
        )
        self._max_concurrency: int | None = None

    # -- the user-facing API ---------------------------------------------------------------------
    def attend(self, channel: Channel) -> Awaitable[Any]:
        """Answer in ``channel``; called when a message there wakes the bot. Override it.

        Each waking message calls it once; decorate it with ``@genbot.gatekeep`` to run at most
        one per channel at a time. Exceptions go to :meth:`on_error` (logged by default).
        Typed as returning an awaitable so that both an ``async def`` and a gatekept override
        (which returns a :class:`~genbot.gatekeeping.GateHandle`) match it; this one does nothing.
        """
        return GateHandle(None, scheduled=False)

    def context(self, channel: Channel, limit: int = 16) -> Context:
        """The context window of ``channel``: see :class:`genbot.Context`.

        Raises
        ------
        ValueError
            When ``limit`` is negative.
        """
        return Context(self, channel, limit)

    def own(self, streamer: S) -> S:
        """Make ``streamer`` this bot's: :meth:`close` closes it (unless ``close_streamers`` is
        ``False``). Streamers of other bots, or of nobody, are never closed by this one.

        Parameters
        ----------
        streamer:
            Started or not; owning it twice is owning it once.

        Returns ``streamer``, so ``self.backend = self.own(make_backend())`` reads well.
        """
        if not any(owned is streamer for owned in self._streamers):
            self._streamers.append(streamer)
        return streamer

    def disown(self, streamer: Streamer) -> None:
        """Stop owning ``streamer`` (:meth:`close` leaves it alone); it is not closed here.

        Parameters
        ----------
        streamer:
            One this bot owns; another is ignored.
        """
        self._streamers = [owned for owned in self._streamers if owned is not streamer]

    @property
    def streamers(self) -> tuple[Streamer, ...]:
        """The streamers this bot owns."""
        return tuple(self._streamers)

    async def reload(self) -> str:
        """Re-read the bot's configuration and apply it; ``/reload`` (and ``SIGHUP`` under
        ``genbot run``) call it. Override it in a bot that has a configuration to reload (the
        ready-made :class:`genbot.chatbot.ChatBot` does).

        Returns one line saying what changed.

        Raises
        ------
        genbot.reload.ReloadError
            Nothing was reloaded (the message says why); this one has no configuration.
        """
        raise ReloadError("this bot has no configuration to reload")

    def may_chat(self, user: discord.abc.User, channel: Where) -> bool:
        """Whether ``user`` may chat with the bot in ``channel`` (the access rules).

        In a server the rules look at the roles ``user`` holds there *now*: from discord.py's
        member cache, else from what :attr:`member_roles` learned (every message and command
        carries its author's roles; :meth:`look_up` asks Discord). Someone who is not a member
        any more, or whose roles nobody knows, counts as holding every blacklisted role and no
        whitelisted one (:data:`genbot.access.UNKNOWN_ROLES`). With the members intent (the
        default) discord.py knows every member, so this is exact and costs no request.

        Parameters
        ----------
        user:
            Who.
        channel:
            Where: a DM (or a user), a server's channel or thread, or ``None`` / a partial
            channel the bot cannot place (then they must be allowed both in DMs and as someone
            of unknown roles in a server).
        """
        place = self._place(channel)
        if place is None:
            return self.access.may_chat(user.id, None)
        if not isinstance(place, discord.Guild):
            return self.access.may_chat(user.id, None) and self.access.may_chat(
                user.id, UNKNOWN_ROLES
            )
        roles = self._roles(place, user.id)
        return self.access.may_chat(user.id, UNKNOWN_ROLES if roles is None else roles)

    async def look_up(self, user: discord.abc.User, channel: Where) -> bool:
        """Make :meth:`may_chat` exact for ``user`` in ``channel`` where only Discord can tell:
        a server whose access depends on roles, a user no cache knows. Then it fetches the member
        once (concurrent look-ups of one member share the request; the answer is kept for
        ``member_ttl`` seconds; a failed request leaves them unknown).

        Parameters
        ----------
        user, channel:
            As for :meth:`may_chat`.

        Returns whether it had to ask Discord.
        """
        place = self._place(channel)
        if not isinstance(place, discord.Guild) or not self.access.roles_matter(user.id):
            return False
        if self._roles(place, user.id) is not None:
            return False
        key = (place.id, user.id)
        task = self._lookups.get(key)
        if task is None:
            task = asyncio.create_task(self._fetch_roles(place, user.id), name="genbot: member")
            self._lookups[key] = task
            task.add_done_callback(lambda _: self._lookups.pop(key, None))
        await asyncio.shield(task)
        return True

    def is_admin(self, user: discord.abc.User) -> bool:
        """Whether ``user`` is one of the bot's admins (the ``admins`` access list).

        Parameters
        ----------
        user:
            Who.
        """
        return self.access.is_admin(user.id)

    @property
    def closing(self) -> bool:
        """Shutting down: no new attends start."""
        return self._shutdown is not None

    def attending(self) -> list[asyncio.Task[Any]]:
        """Attend runs in progress (including gatekept runs started from anywhere)."""
        return [t for t in {*self._attends, *running(self)} if not t.done()]

    # -- where, and which roles ------------------------------------------------------------------
    def _place(self, channel: object, resolve: bool = True) -> Place:
        """The server ``channel`` is in, ``None`` for a DM, or "unknown"."""
        if isinstance(channel, (discord.DMChannel, discord.GroupChannel, *_USERS)):
            return None  # a user or member as a messageable is a DM with them
        guild = getattr(channel, "guild", None)
        if isinstance(guild, discord.Guild):
            return guild
        guild_id = getattr(channel, "guild_id", None)
        if guild_id is not None:
            return self.get_guild(guild_id) or _UNKNOWN_PLACE
        if isinstance(channel, discord.PartialMessageable):
            if channel.type in (discord.ChannelType.private, discord.ChannelType.group):
                return None
            known = self.get_channel(channel.id) if resolve else None
            if known is not None and not isinstance(known, discord.PartialMessageable):
                return self._place(known, resolve=False)
        return _UNKNOWN_PLACE

    def _roles(self, guild: discord.Guild, user_id: int) -> Roles:
        """The role ids ``user_id`` holds in ``guild`` now, :data:`UNKNOWN_ROLES` when they are
        no member, ``None`` when that is not known without asking Discord."""
        member = guild.get_member(user_id)
        if member is not None:
            return [role.id for role in member.roles]
        if self.intents.members and guild.chunked:
            return UNKNOWN_ROLES  # discord.py holds every member: this is not one
        return self.member_roles.get(guild.id, user_id)

    def _learn(self, user: object) -> None:
        """Keep the roles an event carried for a member discord.py does not cache."""
        if isinstance(user, discord.Member) and user.guild.get_member(user.id) is None:
            self.member_roles.put(user.guild.id, user.id, [role.id for role in user.roles])

    async def _fetch_roles(self, guild: discord.Guild, user_id: int) -> None:
        try:
            member = await asyncio.wait_for(guild.fetch_member(user_id), self._lookup_timeout)
        except discord.NotFound:
            self.member_roles.put(guild.id, user_id, None)
        except Exception as error:
            _log.warning(
                "could not look up member %s of %s (%s): counted as holding unknown roles",
                user_id,
                guild.id,
                error or type(error).__name__,
            )
        else:
            self.member_roles.put(guild.id, user_id, [role.id for role in member.roles])

    _lookup_timeout = 10.0

    # -- discord.py hooks ------------------------------------------------------------------------
    async def setup_hook(self) -> None:
        """Serve the metrics (with a ``metrics_port``) and sync the slash commands (unless
        ``sync_commands=False``; when sharded, only in the process that runs shard 0)."""
        await self.metrics.start()
        if self.sync_commands and cluster.syncs_commands(getattr(self, "shard_ids", None)):
            await self.tree.sync()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """With ``cluster_redis``: wait for the identify lease of the shard's bucket (see
        :mod:`genbot.cluster`); else discord.py's spacing (5 s before all but the first)."""
        if self.identify_lock is None:
            return await super().before_identify_hook(shard_id, initial=initial)
        fallback = functools.partial(super().before_identify_hook, shard_id, initial=initial)
        await cluster.identify_in_turn(
            self.identify_lock, self.http.token or "", shard_id or 0, self._concurrency, fallback
        )

    async def _concurrency(self) -> int:
        if self._max_concurrency is None:
            _, _, limits = await self.http.get_bot_gateway()
            self._max_concurrency = int(limits["max_concurrency"])
        return self._max_concurrency

    def latency_of(self, guild_id: int | None) -> float:
        """The gateway latency (seconds) of the connection that gets ``guild_id``'s events
        (``None``: DMs); NaN or infinity before the first heartbeat's answer.

        Parameters
        ----------
        guild_id:
            The guild, or ``None`` for a DM.
        """
        return self.latency

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
        handler = self._OBSERVERS.get(event)
        if handler is not None:
            handler(self, *args)

    def _on_message(self, message: discord.Message) -> None:
        self._learn(message.author)
        self.message_cache.on_create(message)
        self._maybe_attend(message)

    def _on_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        self.message_cache.on_edit(payload)

    def _on_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        self.message_cache.on_delete(payload.channel_id, [payload.message_id])

    def _on_bulk_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        self.message_cache.on_delete(payload.channel_id, payload.message_ids)

    def _on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        self._learn(interaction.user)

    def _on_member_remove(self, payload: discord.RawMemberRemoveEvent) -> None:
        self.member_roles.put(payload.guild_id, payload.user.id, None)

    def _on_connect(self) -> None:
        """A new gateway session: events may have been missed."""
        self.message_cache.invalidate()
        self.member_roles.clear()

    _OBSERVERS: dict[str, Callable[..., None]] = {
        "message": _on_message,
        "raw_message_edit": _on_edit,
        "raw_message_delete": _on_delete,
        "raw_bulk_message_delete": _on_bulk_delete,
        "interaction": _on_interaction,
        "raw_member_remove": _on_member_remove,
        "connect": _on_connect,
    }

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
        self.member_roles.clear()

    async def close(self) -> None:
        """Graceful and bounded: no new attends; running ones get ``shutdown_timeout`` seconds,
        then are cancelled (and get as long again to end); the streamers this bot owns are
        closed, in parallel, each given ``shutdown_timeout`` and left behind (logged) when its
        close hangs for twice that; then discord.py closes the connection. So it returns within
        about ``4 * shutdown_timeout`` plus discord.py's own close."""
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(
                self._wind_down(asyncio.current_task()), name="genbot: shutdown"
            )
        try:
            await asyncio.shield(self._shutdown)
        finally:
            await self.metrics.stop()
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
        for lookup in list(self._lookups.values()):
            lookup.cancel()
        if self.close_streamers:
            await self._close_streamers()
        if self.identify_lock is not None:
            await self.identify_lock.close()

    async def _close_streamers(self) -> None:
        timeout = self.shutdown_timeout
        closes = [
            _bounded_in_thread(
                functools.partial(streamer.close, timeout), 2 * timeout, repr(streamer)
            )
            for streamer in self._streamers
        ]
        await asyncio.gather(*closes)


class ShardedGenbot(Genbot, discord.AutoShardedClient):
    """A :class:`Genbot` running several shards as discord.py's ``AutoShardedClient``; made
    by ``Genbot(shard_count=..., shard_ids=...)`` (or a subclass's), not directly.

    A shard's new gateway session (its READY after a connection that could not RESUME) drops
    only that shard's part of the context cache: the channels of its guilds, and DMs for
    shard 0. ``/ping`` answers with the latency of the shard the command came on. ``close()``
    (and ``/shutdown``) stops this process's shards only; other processes run on.
    """

    def latency_of(self, guild_id: int | None) -> float:
        shard = self.get_shard(cluster.shard_of(guild_id, self.shard_count or 1))
        return float("nan") if shard is None else shard.latency

    def _on_shard_connect(self, shard_id: int) -> None:
        count = self.shard_count or 1
        self.message_cache.invalidate(
            lambda guild_id: cluster.shard_of(guild_id, count) == shard_id
        )
        self.member_roles.clear()

    def _on_any_connect(self) -> None:
        """Every shard's READY also fires ``connect``: its ``shard_connect`` does the work."""

    _OBSERVERS: dict[str, Callable[..., None]] = {
        **Genbot._OBSERVERS,
        "connect": _on_any_connect,
        "shard_connect": _on_shard_connect,
    }


_SHARDED: dict[type[Genbot], type[Genbot]] = {}


def sharded_class(cls: type[G]) -> type[G]:
    """``cls`` as an ``AutoShardedClient``: itself when it is one, else a subclass of ``cls``
    and :class:`ShardedGenbot` (so ``cls``'s own overrides still come first), made once."""
    if discord.AutoShardedClient in cls.__mro__:
        return cls
    if cls in ShardedGenbot.__mro__:
        return ShardedGenbot  # type: ignore[return-value]  # Genbot itself
    made = _SHARDED.get(cls)
    if made is None:
        namespace = {"__module__": cls.__module__, "__qualname__": f"Sharded{cls.__name__}"}
        made = _SHARDED[cls] = type(f"Sharded{cls.__name__}", (cls, ShardedGenbot), namespace)
    return made  # type: ignore[return-value]  # a subclass of cls


async def _bounded_in_thread(call: Callable[[], object], timeout: float, what: str) -> None:
    """Run ``call`` on a daemon thread and wait at most ``timeout`` seconds for it; a call that
    hangs is left behind (logged), and cannot keep the process alive at exit."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as error:
            errors.append(error)
        finally:
            try:
                loop.call_soon_threadsafe(done.set)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    threading.Thread(target=run, name=f"genbot: close {what}", daemon=True).start()
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except asyncio.TimeoutError:
        _log.error("closing %s did not finish within %.1f s; left behind", what, timeout)
        return
    if errors:
        _log.error("closing %s failed", what, exc_info=errors[0])
