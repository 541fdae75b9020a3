"""`DiscordServer`: the loopback Discord (REST + Gateway) and its test-facing API; `run_bot`.

The server's state lives in a `ServerState` (`DiscordServer.state`), which the REST, gateway
and interaction handlers receive; this module is the test-facing layer: it builds the world,
acts as users, and checks a test's requests for mistakes Discord would refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import discord
import discord.gateway
import discord.http
import yarl
from aiohttp import web

from . import gateway, interactions, permissions, rest
from .components import FakeComponentInteraction, find_component
from .limits import make_fault
from .models import (
    CATEGORY,
    DM,
    EVERYONE_PERMISSIONS,
    GUILD_MEMBERS,
    GUILDS,
    PRIVATE_THREAD,
    PUBLIC_THREAD,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMember,
    FakeRole,
    FakeUser,
    Snowflakes,
)
from .sharding import IDENTIFY_INTERVAL, SessionStartLimit, shard_of
from .state import ServerState

__all__ = ["DiscordServer", "FakeInteraction", "run_bot"]

_log = logging.getLogger(__name__)

ChannelRef = FakeChannel | int
UserRef = FakeUser | int
MessageRef = dict[str, Any] | int
ClientT = TypeVar("ClientT", bound=discord.Client)


class DiscordServer:
    """A fake Discord on 127.0.0.1 for discord.py clients; use as ``async with DiscordServer()``.

    Entering starts the server and points discord.py at it (``discord.http.Route.BASE`` and
    ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY``); exiting closes every connection and
    restores both. One bot user (`bot_user`, `token`) is a member of every guild. Only one
    server may be entered at a time (the endpoints are process-wide).

    `ratelimit_limit` requests per `ratelimit_window` seconds per route and major parameter
    are announced in the X-RateLimit headers (discord.py waits when Remaining hits 0; Discord's
    own message limit is about 5 per 5 s). `privileged_intents=False` is the developer portal
    with the members, presences and message-content switches off. `heartbeat_interval` is in
    seconds, as HELLO announces it.

    Sharding works as on Discord: ``/gateway/bot`` recommends `shard_count` shards and reports
    the session start limit (`session_start_total` IDENTIFYs, ``remaining`` counting down, and
    `max_concurrency`); an IDENTIFY carries ``shard: [id, count]`` and its session gets only the
    guilds and events of guilds with ``(guild_id >> 22) % count == id``, DMs going to shard 0.
    A second IDENTIFY in the same bucket (``shard_id % max_concurrency``) within
    `identify_interval` seconds (Discord: 5) is refused with Invalid Session (op 9) and recorded
    in `refused_identifies`. `create_guild` can place a guild on a chosen shard.

    Everything the server knows is in `state` (a `ServerState`), which the REST, gateway and
    interaction handlers share; the methods here are the test-facing layer over it.
    """

    def __init__(
        self,
        *,
        bot_name: str = "genbot",
        heartbeat_interval: float = 41.25,
        ratelimit_limit: int = 50,
        ratelimit_window: float = 1.0,
        privileged_intents: bool = True,
        shard_count: int = 1,
        max_concurrency: int = 1,
        session_start_total: int = 1000,
        identify_interval: float = IDENTIFY_INTERVAL,
    ) -> None:
        self.state = ServerState(
            bot_name=bot_name,
            heartbeat_interval=heartbeat_interval,
            ratelimit_limit=ratelimit_limit,
            ratelimit_window=ratelimit_window,
            privileged_intents=privileged_intents,
            shard_count=shard_count,
            session_start_limit=SessionStartLimit(
                total=session_start_total,
                max_concurrency=max_concurrency,
                interval=identify_interval,
            ),
        )
        self._runner: web.AppRunner | None = None
        self._saved: tuple[str, yarl.URL] | None = None

    # -- settings and identity (the state's) ---------------------------------------------------

    @property
    def snowflakes(self) -> Snowflakes:
        return self.state.snowflakes

    @property
    def token(self) -> str:
        return self.state.token

    @property
    def application_id(self) -> int:
        return self.state.application_id

    @property
    def application_flags(self) -> int:
        return self.state.application_flags

    @property
    def bot_user(self) -> FakeUser:
        return self.state.bot_user

    @property
    def privileged_intents(self) -> bool:
        return self.state.privileged_intents

    @privileged_intents.setter
    def privileged_intents(self, value: bool) -> None:
        self.state.privileged_intents = value

    @property
    def heartbeat_interval(self) -> float:
        return self.state.heartbeat_interval

    @heartbeat_interval.setter
    def heartbeat_interval(self, value: float) -> None:
        self.state.heartbeat_interval = value

    @property
    def ratelimit_limit(self) -> int:
        return self.state.requests.limit

    @ratelimit_limit.setter
    def ratelimit_limit(self, value: int) -> None:
        self.state.requests.limit = value

    @property
    def ratelimit_window(self) -> float:
        return self.state.requests.window

    @ratelimit_window.setter
    def ratelimit_window(self, value: float) -> None:
        self.state.requests.window = value

    @property
    def global_ratelimit(self) -> int | None:
        """Requests per second the whole bot may make (Discord's global rate limit, about 50);
        beyond it a request is answered 429 with ``"global": true`` and counted in
        `rate_limited_count` and `global_rate_limited`. Interaction responses are exempt, as on
        Discord. ``None`` (the default): no bot-wide limit."""
        return self.state.requests.global_limit

    @global_ratelimit.setter
    def global_ratelimit(self, value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError(f"global_ratelimit must be at least 1 or None, not {value!r}")
        self.state.requests.global_limit = value

    @property
    def global_rate_limited(self) -> int:
        """REST requests answered 429 for the bot-wide limit (`global_ratelimit`)."""
        return self.state.requests.too_many_global

    @property
    def unhandled_requests(self) -> list[tuple[str, str]]:
        """(method, path) of each API request to a route this server does not fake."""
        return self.state.unhandled_requests

    @property
    def resumes(self) -> int:
        """How many RESUMEs succeeded."""
        return self.state.resumes

    @property
    def gateway_queries(self) -> list[dict[str, str]]:
        """The query of each gateway connection, oldest first (v, encoding, compress)."""
        return self.state.gateway_queries

    @property
    def shard_count(self) -> int:
        """The shard count ``/gateway/bot`` recommends, and `create_guild`'s ``shard`` counts in."""
        return self.state.shard_count

    @property
    def session_start_limit(self) -> SessionStartLimit:
        return self.state.session_start_limit

    @property
    def refused_identifies(self) -> list[tuple[int, int] | None]:
        """The ``(shard_id, shard_count)`` (``None``: unsharded) of each IDENTIFY refused for
        coming too soon after another of its bucket, or with no session starts left."""
        return self.state.refused_identifies

    def delay_heartbeat_acks(self, shard: tuple[int, int] | None, seconds: float) -> None:
        """Hold back each HEARTBEAT_ACK to identified sessions of `shard` (``(shard_id,
        shard_count)``, ``None``: unsharded) by `seconds`, as a slow link would: the client
        then measures that much latency for it (``0`` ends it). The first heartbeat, sent
        before IDENTIFY, is answered at once.

        Raises
        ------
        ValueError
            A negative or non-finite `seconds`.
        """
        if not 0 <= seconds < float("inf"):
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self.state.ack_delays[shard] = seconds

    def heartbeat_acks(self, shard: tuple[int, int] | None) -> int:
        """How many HEARTBEAT_ACKs went to sessions of `shard` (``None``: unsharded sessions
        and connections not identified yet)."""
        return self.state.heartbeat_acks.get(shard, 0)

    def shard_of(self, guild: FakeGuild | None) -> int:
        """The shard (of `shard_count`) that gets the guild's events; 0 for a DM (``None``)."""
        return shard_of(None if guild is None else guild.id, self.shard_count)

    def ready_shards(self) -> list[tuple[int, int] | None]:
        """The shard of each connected session that got its READY and GUILD_CREATEs, sorted
        (``None``, unsharded, first)."""
        shards = [s.shard for s in self.state.sessions.values() if s.ready and s.connection]
        return sorted(shards, key=lambda shard: (-1, 0) if shard is None else shard)

    @property
    def env(self) -> dict[str, str]:
        """What a bot process started with `genbot.testing.launch` needs to reach this server:
        its two addresses and ``DISCORD_TOKEN``."""
        return {
            "LOOPBACK_DISCORD_API": self.api_url,
            "LOOPBACK_DISCORD_GATEWAY": self.gateway_url,
            "DISCORD_TOKEN": self.token,
        }

    @property
    def port(self) -> int:
        return self.state.port

    @property
    def base_url(self) -> str:
        return self.state.base_url

    @property
    def api_url(self) -> str:
        return self.state.api_url

    @property
    def gateway_url(self) -> str:
        return self.state.gateway_url

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> DiscordServer:
        state = self.state
        app = web.Application(middlewares=[rest.middleware(state)], client_max_size=64 * 2**20)

        async def handle_gateway(request: web.Request) -> web.StreamResponse:
            return await gateway.handle_gateway(state, request)

        app.router.add_get("/gateway", handle_gateway)
        rest.add_routes(state, app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        state.port = self._runner.addresses[0][1]
        self._saved = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
        discord.http.Route.BASE = self.api_url
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        _log.debug("loopback Discord listening on %s", self.base_url)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._saved is not None:
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = self._saved
            self._saved = None
        for connection in list(self.state.connections):
            await connection.close(1001, b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- waiting -------------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        """Return once `predicate()` is true; it is re-evaluated on every change of the server's
        state (messages, typing, interaction responses, commands, connections), never by polling,
        so it must depend on that state: to wait for something the client did with an event,
        use the client's own ``wait_for``.

        Raises
        ------
        TimeoutError
            Still false after `timeout` seconds.
        """
        await self.state.wait_for(predicate, timeout)

    async def wait_until_ready(self, timeout: float = 5.0) -> None:
        """Wait until a connected client has identified and received READY and GUILD_CREATEs.

        Raises
        ------
        TimeoutError
            None did within `timeout` seconds.
        """
        await self.wait_for(self.state.has_ready_session, timeout=timeout)

    @property
    def connected(self) -> int:
        """How many sessions currently have an open gateway connection."""
        return self.state.connected

    # -- building the world --------------------------------------------------------------------

    def create_user(self, name: str, *, bot: bool = False) -> FakeUser:
        return self.state.add_user(FakeUser(self.snowflakes.next(), name, bot=bot))

    def create_guild(
        self, name: str = "Guild", *, owner: FakeUser | None = None, shard: int | None = None
    ) -> FakeGuild:
        """A guild with its @everyone role, the owner and the bot as members. A connected bot
        gets its GUILD_CREATE (``on_guild_join``), as when a bot is added to a guild; what is
        added to the guild afterwards must be announced like in any guild (`announce_channel`).

        Parameters
        ----------
        shard:
            Place the guild on this shard of `shard_count`: its id is picked so that
            ``(id >> 22) % shard_count == shard``. ``None``: wherever its id falls.

        Raises
        ------
        ValueError
            `shard` is not one of the `shard_count` shards.
        """
        if shard is None:
            guild_id = self.snowflakes.next()
        else:
            guild_id = self.snowflakes.next_on_shard(shard, self.shard_count)
        owner = owner or self.create_user(f"{name}-owner")
        guild = FakeGuild(guild_id, name, owner.id)
        guild.roles[guild.id] = FakeRole(guild.id, "@everyone", guild.id, 0, EVERYONE_PERMISSIONS)
        for user in (owner, self.bot_user):
            guild.members[user.id] = FakeMember(user, guild.id)
        return self.state.add_guild(guild)

    def create_role(self, guild: FakeGuild, name: str, *, permissions: int = 0) -> FakeRole:
        role = FakeRole(self.snowflakes.next(), name, guild.id, len(guild.roles), permissions)
        guild.roles[role.id] = role
        return role

    def set_overwrite(
        self,
        channel: FakeChannel,
        target: FakeRole | FakeUser,
        *,
        allow: int | discord.Permissions = 0,
        deny: int | discord.Permissions = 0,
    ) -> dict[str, Any]:
        """Set the permission overwrite of a role (@everyone is ``guild.roles[guild.id]``) or
        a member in a guild channel (none allowed nor denied removes it); a connected bot gets
        CHANNEL_UPDATE. Returns the overwrite's JSON.

        Raises
        ------
        ValueError
            A DM or a thread, or a role of another guild.
        """
        return permissions.set_overwrite(
            self.state, channel, target, allow=_bits(allow), deny=_bits(deny)
        )

    def add_member(
        self,
        guild: FakeGuild,
        user: FakeUser,
        *,
        roles: Iterable[FakeRole] = (),
        nick: str | None = None,
    ) -> FakeMember:
        """Make `user` a member of `guild` (replacing their membership if they have one). A
        connected bot with the members intent gets GUILD_MEMBER_ADD for someone new."""
        return self.state.add_member(
            guild, FakeMember(user, guild.id, [role.id for role in roles], nick)
        )

    def create_channel(
        self, guild: FakeGuild, name: str, *, category: FakeChannel | None = None
    ) -> FakeChannel:
        """A text channel in `guild`, in `category` when given (its ``parent_id``).

        Parameters
        ----------
        guild: the server it is in.
        name: the channel's name.
        category: the category it is in (from `create_category`); ``None``: none.

        Raises
        ------
        ValueError
            `category` is not a category of `guild`.
        """
        if category is not None and (category.type != CATEGORY or category.guild_id != guild.id):
            raise ValueError(f"{category.name!r} is not a category of {guild.name!r}")
        parent = None if category is None else category.id
        channel = FakeChannel(self.snowflakes.next(), name, guild_id=guild.id, parent_id=parent)
        return self.state.add_channel(guild, channel)

    def create_category(self, guild: FakeGuild, name: str) -> FakeChannel:
        """A category (channel type 4) in `guild`, for `create_channel`'s ``category``.

        Parameters
        ----------
        guild: the server it is in.
        name: the category's name.
        """
        category = FakeChannel(self.snowflakes.next(), name, CATEGORY, guild_id=guild.id)
        return self.state.add_channel(guild, category)

    def create_thread(
        self,
        channel: FakeChannel,
        name: str,
        *,
        owner: FakeUser | None = None,
        members: Iterable[FakeUser] = (),
        private: bool = False,
    ) -> FakeChannel:
        """A thread in `channel` (not started from a message). `members` are its thread members;
        the bot sees it either way, as Discord shows bots every public thread.

        Raises
        ------
        ValueError
            `channel` is a DM.
        """
        owner = owner or self.bot_user
        guild = self.state.guild_of(channel)
        if guild is None:
            raise ValueError("threads live in guild channels, not DMs")
        thread = FakeChannel(
            self.snowflakes.next(),
            name,
            PRIVATE_THREAD if private else PUBLIC_THREAD,
            guild_id=guild.id,
            parent_id=channel.id,
            owner_id=owner.id,
            thread_members=list(dict.fromkeys([owner.id, *(m.id for m in members)])),
        )
        return self.state.add_channel(guild, thread)

    def create_dm(self, user: FakeUser) -> FakeChannel:
        """The DM channel between `user` and the bot (the same one every time)."""
        return self.state.dm_channel(user)

    # -- lookups -------------------------------------------------------------------------------

    def channel(self, channel: ChannelRef) -> FakeChannel:
        return self.state.channels[_id(channel)]

    def user(self, user: UserRef) -> FakeUser:
        return self.state.users[_id(user)]

    def messages(self, channel: ChannelRef) -> list[dict[str, Any]]:
        """Every message in the channel as it is now (Discord JSON), oldest first."""
        return list(self.channel(channel).messages.values())

    def bot_messages(self, channel: ChannelRef) -> list[dict[str, Any]]:
        bot_id = str(self.bot_user.id)
        return [m for m in self.messages(channel) if m["author"]["id"] == bot_id]

    def message(self, channel: ChannelRef, message_id: int) -> dict[str, Any]:
        return self.channel(channel).messages[int(message_id)]

    def typing_events(self, channel: ChannelRef) -> list[tuple[int, float]]:
        """(user id, time.time()) of each typing trigger in the channel, oldest first."""
        return list(self.state.typing.get(_id(channel), []))

    def commands(self, guild: FakeGuild | None = None) -> list[dict[str, Any]]:
        """Application commands the bot registered, globally or in `guild`."""
        return list(self.state.commands.get(None if guild is None else guild.id, []))

    def interaction(self, token: str) -> FakeInteraction | None:
        return self.state.interactions.get(token)

    # -- REST accounting and injected trouble --------------------------------------------------

    def request_count(self, method: str, route: str) -> int:
        """REST requests seen for a route template like ``/channels/{channel_id}/messages``
        (rate-limited and failed attempts included)."""
        return self.state.requests.count((method.upper(), route))

    def request_times(self, method: str, route: str) -> list[float]:
        """When each REST request to a route template arrived (``time.monotonic()``), oldest
        first; rate-limited and failed attempts included."""
        return list(self.state.requests.times.get((method.upper(), route), []))

    def rate_limited_count(self, method: str, route: str) -> int:
        """REST requests to a route template answered 429 Too Many Requests."""
        return self.state.requests.too_many[(method.upper(), route)]

    def rate_limit(
        self, method: str, route: str, *, times: int = 1, retry_after: float = 0.2
    ) -> None:
        """Answer the next `times` requests to the route template with 429 Too Many Requests."""
        self.state.requests.force_rate_limit((method.upper(), route), times, retry_after)

    def fail_requests(
        self,
        method: str,
        route: str,
        *,
        status: int = 502,
        times: int | None = None,
        seconds: float | None = None,
        after_effect: bool = False,
    ) -> None:
        """Answer requests to a route template with an error, as an outage of Discord would.

        The next `times` requests (or every request during the next `seconds`) to `method`
        `route` (a template as in `request_count`, e.g. ``"/channels/{channel_id}/messages"``)
        get `status` and Discord's JSON error body (``{"message": "502: Bad Gateway",
        "code": 0}``). They still count in `request_count` and in the rate-limit window. A
        planned `rate_limit` is answered first. Calling again for the same route replaces the
        plan; ``times=0`` (or ``seconds=0``) clears it, `clear_failures` clears every route.

        What a discord.py client sees: it retries 500, 502, 504 and 524 by itself, 5 attempts
        in all, sleeping 1, 3, 5, 7 then 9 s after each, and raises `discord.DiscordServerError`
        once all 5 failed; so ``times=1`` with 502 costs it one 1 s retry and then succeeds.
        Any other 5xx (503) raises `discord.DiscordServerError` at once, 403 `discord.Forbidden`,
        404 `discord.NotFound`, other 4xx `discord.HTTPException`, without a retry.

        Parameters
        ----------
        method, route:
            The request, e.g. ``"POST", "/channels/{channel_id}/messages"``.
        status:
            The HTTP status answered, 400..599 except 429 (use `rate_limit` for that).
        times, seconds:
            Exactly one: how many requests fail, or for how long every request fails.
        after_effect:
            Carry the request out first (the message is created, stored and dispatched on the
            gateway) and only then answer the error, as when Discord did the work but the
            answer was lost (a 502/504 from its proxy). A retry then repeats it, except that
            a message created with a ``nonce`` and ``enforce_nonce`` (discord.py's ``send``
            always sends a random one, reused by its own retries) is returned, not made again;
            an application that calls ``send`` again makes a second message.

        Raises
        ------
        ValueError
            Both or neither of `times`/`seconds`, a negative one, a status that is not an
            error (or is 429), or a route this server does not serve.
        """
        key = _route_key(method, route)
        fault = make_fault(status, times, seconds, after_effect, time.monotonic())
        self.state.requests.faults.set(key, fault)

    def clear_failures(self) -> None:
        """Forget every failure planned by `fail_requests`."""
        self.state.requests.faults.clear()

    # -- acting as users -----------------------------------------------------------------------

    async def send_message(
        self,
        channel: ChannelRef,
        author: FakeUser,
        content: str = "",
        *,
        reply_to: MessageRef | None = None,
        mentions_bot: bool = False,
        embeds: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Post as `author` and dispatch MESSAGE_CREATE. `mentions_bot` prefixes the bot's
        mention; a reply (`reply_to`: message dict or id) pings the replied-to author.

        Raises
        ------
        ValueError
            `author` cannot post there (not a member of the guild, not in the DM, a
            category).
        """
        fake = self.channel(channel)
        self._check_can_post(fake, author)
        if mentions_bot:
            content = f"<@{self.bot_user.id}> {content}"
        reference = None
        if reply_to is not None:
            reference = {"message_id": str(_msg_id(reply_to))}
        message = self.state.create_message(
            fake,
            author,
            {"content": content, "embeds": embeds or []},
            reference=reference,
        )
        await self.state.dispatch_message("MESSAGE_CREATE", message)
        return message

    def _check_can_post(self, channel: FakeChannel, user: FakeUser) -> None:
        """Catch test mistakes Discord would refuse: posting where the user isn't, or in a
        category (it holds no messages)."""
        if channel.type == CATEGORY:
            raise ValueError(f"{channel.name!r} is a category: it holds no messages")
        if channel.type == DM:
            if user not in (channel.recipient, self.bot_user):
                raise ValueError(f"{user.name} is not in this DM channel")
        elif self.state.member(channel, user.id) is None:
            raise ValueError(f"{user.name} is not a member of the channel's guild")

    async def edit_message(
        self, channel: ChannelRef, message_id: MessageRef, content: str
    ) -> dict[str, Any]:
        fake = self.channel(channel)
        message = self.state.update_message(fake, _msg_id(message_id), {"content": content})
        await self.state.dispatch_message("MESSAGE_UPDATE", message)
        return message

    async def unfurl(
        self, channel: ChannelRef, message_id: MessageRef, embeds: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Discord's link preview: the message gains `embeds` and a MESSAGE_UPDATE goes out
        with its content and ``edited_timestamp`` unchanged (no edit by its author)."""
        message = self.message(channel, _msg_id(message_id))
        message["embeds"] = list(embeds)
        self.state.changed()
        await self.state.dispatch_message("MESSAGE_UPDATE", message)
        return message

    async def delete_message(self, channel: ChannelRef, message_id: MessageRef) -> None:
        await self.state.delete_messages(self.channel(channel), [_msg_id(message_id)])

    async def bulk_delete(self, channel: ChannelRef, message_ids: Iterable[MessageRef]) -> None:
        ids = [_msg_id(m) for m in message_ids]
        await self.state.delete_messages(self.channel(channel), ids)

    async def update_member(
        self,
        guild: FakeGuild,
        user: FakeUser,
        *,
        roles: Iterable[FakeRole] | None = None,
        nick: str | None = None,
    ) -> FakeMember:
        member = guild.members[user.id]
        if roles is not None:
            member.roles = [role.id for role in roles]
        if nick is not None:
            member.nick = nick
        data = member.to_json() | {"guild_id": str(guild.id)}
        await self.state.dispatch("GUILD_MEMBER_UPDATE", data, intent=GUILD_MEMBERS)
        return member

    async def remove_member(self, guild: FakeGuild, user: FakeUser) -> None:
        """`user` leaves `guild` (or is kicked): no longer a member, out of its threads, and
        GUILD_MEMBER_REMOVE (``guild_id``, ``user``) goes to bots with the members intent.
        Their messages stay, with their author, in the channels and in REST history, as on
        Discord. Removing the bot itself is the bot being kicked: it gets GUILD_DELETE and
        loses access to the guild's channels (403 Missing Access).

        Raises
        ------
        ValueError
            `user` is not a member of `guild`, or owns it (an owner cannot leave).
        """
        if user.id not in guild.members:
            raise ValueError(f"{user.name} is not a member of {guild.name}")
        if user.id == guild.owner_id:
            raise ValueError(f"{user.name} owns {guild.name} and cannot leave it")
        await self.state.remove_member(guild, user)

    async def start_typing(self, channel: ChannelRef, user: FakeUser) -> None:
        """`user` starts typing in the channel (TYPING_START); recorded in `typing_events`.

        Raises
        ------
        ValueError
            `user` cannot post there.
        """
        fake = self.channel(channel)
        self._check_can_post(fake, user)
        await self.state.start_typing(fake, user)

    async def announce_channel(self, channel: FakeChannel) -> None:
        """Dispatch CHANNEL_CREATE / THREAD_CREATE for a channel made after the bot connected."""
        if channel.is_thread:
            data = channel.to_json() | {"newly_created": True}
            await self.state.dispatch("THREAD_CREATE", data, intent=GUILDS)
        else:
            await self.state.dispatch("CHANNEL_CREATE", channel.to_json(), intent=GUILDS)

    async def add_thread_members(self, thread: FakeChannel, users: Iterable[FakeUser]) -> None:
        """Add users to a thread and dispatch THREAD_MEMBERS_UPDATE."""
        await self.state.add_thread_members(thread, [user.id for user in users])

    async def invoke_command(
        self,
        channel: ChannelRef,
        user: FakeUser,
        name: str,
        options: dict[str, Any] | None = None,
    ) -> FakeInteraction:
        """Invoke the bot's registered slash command `name` as `user` (INTERACTION_CREATE);
        "group sub" names a subcommand. `options` maps option names to values (a FakeUser for
        user options).

        Raises
        ------
        LookupError
            The bot registered no such command (or subcommand) there.
        ValueError
            `user` cannot post there, or the command has no such option.
        """
        return await self._interaction(channel, user, name, options or {})

    async def invoke_autocomplete(
        self,
        channel: ChannelRef,
        user: FakeUser,
        name: str,
        option: str,
        typed: str,
    ) -> list[dict[str, Any]]:
        """Type ``typed`` into the option ``option`` of the bot's slash command ``name`` as
        ``user`` (an APPLICATION_COMMAND_AUTOCOMPLETE interaction); returns the choices the bot
        offered (``{"name", "value"}`` each), waiting for them up to 5 s.

        Raises
        ------
        LookupError
            The bot registered no such command there.
        ValueError
            `user` cannot post there, or the command has no such option.
        """
        interaction = await self._interaction(channel, user, name, {option: typed}, focused=option)
        response = await interaction.wait_response()
        choices: list[dict[str, Any]] = response["payload"]["data"]["choices"]
        return choices

    async def _interaction(
        self,
        channel: ChannelRef,
        user: FakeUser,
        name: str,
        options: dict[str, Any],
        *,
        focused: str | None = None,
    ) -> FakeInteraction:
        fake = self.channel(channel)
        self._check_can_post(fake, user)
        command = self.state.find_command(self.state.guild_of(fake), name.split()[0])
        if command is None:
            raise LookupError(f"the bot registered no command named {name!r} here")
        interaction = FakeInteraction(
            self.snowflakes.next(),
            secrets.token_urlsafe(32),
            name,
            fake,
            user,
            {},
            self.state.changes,
        )
        payload = interactions.interaction_payload(self.state, interaction, command, options)
        if focused is not None:  # an autocomplete: the option being typed is focused
            payload["type"] = 4
            for given in payload["data"]["options"]:
                given["focused"] = given["name"] == focused
        interaction.payload = payload
        self.state.interactions[interaction.token] = interaction
        await self.state.dispatch("INTERACTION_CREATE", interaction.payload)
        return interaction

    # -- buttons (message components) ---------------------------------------------------------

    async def press(
        self,
        channel: ChannelRef,
        message_id: MessageRef,
        custom_id: str,
        user: FakeUser,
    ) -> FakeComponentInteraction:
        """Press the button `custom_id` of a message as `user` (INTERACTION_CREATE of type 3,
        MESSAGE_COMPONENT). The bot's answers fill in the returned interaction's ``responses``
        (``await interaction.wait_response()``: e.g. an ephemeral refusal); an UPDATE_MESSAGE
        or DEFERRED_UPDATE_MESSAGE answer makes the pressed message the original response.

        Raises
        ------
        LookupError
            The message is not in the channel, or has no button `custom_id` (a user cannot
            press what is not shown).
        ValueError
            The button is disabled, or `user` cannot see the channel.
        """
        fake = self.channel(channel)
        self._check_can_post(fake, user)
        message = fake.messages.get(_msg_id(message_id))
        if message is None:
            raise LookupError(f"no message {_msg_id(message_id)} in channel {fake.id}")
        component = find_component(message, custom_id)
        if component is None:
            raise LookupError(f"message {message['id']} shows no button {custom_id!r}")
        if component.get("disabled"):
            raise ValueError(f"the button {custom_id!r} is disabled")
        interaction = FakeComponentInteraction(
            self.snowflakes.next(),
            secrets.token_urlsafe(32),
            custom_id,
            fake,
            user,
            {},
            self.state.changes,
            message=message,
        )
        interaction.payload = interactions.component_payload(self.state, interaction, component)
        self.state.interactions[interaction.token] = interaction
        await self.state.dispatch("INTERACTION_CREATE", interaction.payload)
        return interaction

    def buttons(self, channel: ChannelRef, message_id: MessageRef) -> list[str]:
        """The labels of the buttons a message shows, in order (``[]``: none)."""
        message = self.channel(channel).messages[_msg_id(message_id)]
        return [
            str(button.get("label") or "")
            for row in message.get("components") or []
            for button in row.get("components") or []
        ]

    async def drop_connections(
        self, *, resumable: bool = True, shard: tuple[int, int] | None = None
    ) -> None:
        """Close every gateway websocket, as a network failure would. The clients reconnect and
        RESUME (getting the events dispatched meanwhile); with ``resumable=False`` their sessions
        are forgotten first, so the RESUME is answered INVALID_SESSION and they identify anew.
        `shard` (``(shard_id, shard_count)``) drops only the sessions of that shard."""
        sessions = [s for s in self.state.sessions.values() if shard is None or s.shard == shard]
        connections = [s.connection for s in sessions if s.connection is not None]
        if shard is None:
            connections = list(self.state.connections)
        if not resumable:
            for session in sessions:
                self.state.end_session(session.id)
        for connection in connections:
            await connection.close(4000, b"dropped by the test")
        self.state.changed()

    # -- the state's message operations, for tests that build history directly -----------------

    def create_message(
        self,
        channel: FakeChannel,
        author: FakeUser,
        body: dict[str, Any],
        *,
        reference: dict[str, Any] | None = None,
        attachments: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store a message without dispatching it (see `ServerState.create_message`)."""
        return self.state.create_message(
            channel, author, body, reference=reference, attachments=attachments, extra=extra
        )

    def update_message(
        self, channel: FakeChannel, message_id: int, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Edit a stored message without dispatching (see `ServerState.update_message`)."""
        return self.state.update_message(channel, message_id, body)

    def sees_content(self, intents: int | None, message: dict[str, Any]) -> bool:
        return self.state.sees_content(intents, message)

    async def dispatch_message(self, event: str, message: dict[str, Any]) -> None:
        await self.state.dispatch_message(event, message)

    async def dispatch(self, event: str, data: dict[str, Any], *, intent: int = 0) -> None:
        """Send a dispatch to every session whose intents include `intent` (0: to all)."""
        await self.state.dispatch(event, data, intent=intent)


def _bits(value: int | discord.Permissions) -> int:
    return value.value if isinstance(value, discord.Permissions) else int(value)


def _id(obj: Any) -> int:
    return int(obj) if isinstance(obj, (int, str)) else int(obj.id)


def _msg_id(message: MessageRef) -> int:
    return int(message["id"]) if isinstance(message, dict) else int(message)


def _route_key(method: str, route: str) -> tuple[str, str]:
    """(METHOD, route) of a route template this server serves.

    Raises
    ------
    ValueError
        No such route.
    """
    key = (method.upper(), route)
    if key not in rest.route_keys():
        raise ValueError(f"the loopback server serves no route {key[0]} {route}")
    return key


@contextlib.asynccontextmanager
async def run_bot(
    bot: ClientT, server: DiscordServer, *, timeout: float = 10.0
) -> AsyncIterator[ClientT]:
    """Run ``bot.start(server.token)`` in a task until the block ends.

    Waits (at most `timeout` s) until discord.py fires on_ready. Tip: discord.py waits
    `guild_ready_timeout` (2 s by default) after the last GUILD_CREATE before on_ready, so pass
    ``guild_ready_timeout=0.05`` to the client in tests. On exit the bot is closed and its task
    awaited (bounded by `timeout`); an exception the task ended with is raised.
    """
    task = asyncio.create_task(bot.start(server.token), name="genbot-testing-bot")
    ready = asyncio.create_task(bot.wait_until_ready())
    try:
        done, _ = await asyncio.wait(
            {task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            task.result()
            raise RuntimeError("the bot stopped before it was ready")
        if not done:
            raise TimeoutError(f"the bot was not ready within {timeout} s")
        yield bot
    finally:
        ready.cancel()
        await asyncio.wait_for(bot.close(), timeout)
        try:
            await asyncio.wait_for(task, timeout)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
