"""`DiscordServer`: the loopback Discord (REST + Gateway) and its test-facing API; `run_bot`."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import discord
import discord.gateway
import discord.http
import yarl
from aiohttp import web

from . import gateway, interactions, rest
from .faults import FaultPlan, make_fault
from .state import (
    DM,
    EVERYONE_PERMISSIONS,
    MESSAGE_CONTENT_INTENT,
    PRIVATE_THREAD,
    PUBLIC_THREAD,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    Snowflakes,
    blank_content,
    iso_time,
    mentioned_role_ids,
    mentioned_user_ids,
)

__all__ = ["DiscordServer", "FakeInteraction", "run_bot"]

GUILDS, GUILD_MEMBERS = 1 << 0, 1 << 1
GUILD_MESSAGES, GUILD_MESSAGE_TYPING = 1 << 9, 1 << 11
DIRECT_MESSAGES, DIRECT_MESSAGE_TYPING = 1 << 12, 1 << 14
REPLY = 19
ChannelRef = FakeChannel | int
UserRef = FakeUser | int
ClientT = TypeVar("ClientT", bound=discord.Client)


@dataclass(eq=False)
class FakeInteraction:
    """A slash-command invocation made by `DiscordServer.invoke_command`.

    `responses` fills in as the bot answers: one dict per callback, followup, or edit of the
    original response, each with ``kind`` ("callback", "followup", "edit", "delete"), ``type``
    (the callback type, for callbacks), ``content``, ``ephemeral``, ``message`` (the message JSON,
    when one was made) and ``payload`` (what the bot sent).
    """

    id: int
    token: str
    name: str
    channel: FakeChannel
    user: FakeUser
    payload: dict[str, Any]
    server: DiscordServer
    responses: list[dict[str, Any]] = field(default_factory=list)
    original: dict[str, Any] | None = None
    deferred: bool = False
    ephemeral: bool = False

    @property
    def acknowledged(self) -> bool:
        return any(r["kind"] == "callback" for r in self.responses)

    async def wait_response(self, timeout: float = 5.0, index: int = 0) -> dict[str, Any]:
        """The `index`-th response (0: the first callback), waiting for it up to `timeout` s."""
        await self.server.wait_for(lambda: len(self.responses) > index, timeout=timeout)
        return self.responses[index]


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
    """

    def __init__(
        self,
        *,
        bot_name: str = "genbot",
        heartbeat_interval: float = 41.25,
        ratelimit_limit: int = 50,
        ratelimit_window: float = 1.0,
        privileged_intents: bool = True,
    ) -> None:
        self.snowflakes = Snowflakes()
        self.token = secrets.token_urlsafe(24)
        self.application_id = self.snowflakes.next()
        # The portal's switches for the privileged intents (members, presences, message content);
        # when off, an IDENTIFY asking for one is closed with 4014, as on Discord.
        self.privileged_intents = privileged_intents
        # GATEWAY_MESSAGE_CONTENT_LIMITED | GATEWAY_GUILD_MEMBERS_LIMITED | ..._PRESENCE_LIMITED
        self.application_flags = (1 << 19) | (1 << 15) | (1 << 13) if privileged_intents else 0
        self.bot_user = FakeUser(self.application_id, bot_name, bot=True)
        self.heartbeat_interval = heartbeat_interval
        self.ratelimit_limit = ratelimit_limit
        self.ratelimit_window = ratelimit_window
        self.unhandled_requests: list[tuple[str, str]] = []
        self.resumes = 0
        # The query of each gateway connection, oldest first (v, encoding, compress).
        self.gateway_queries: list[dict[str, str]] = []
        self.port = 0
        self._users: dict[int, FakeUser] = {self.bot_user.id: self.bot_user}
        self._guilds: dict[int, FakeGuild] = {}
        self._channels: dict[int, FakeChannel] = {}
        self._commands: dict[int | None, list[dict[str, Any]]] = {}
        self._interactions: dict[str, FakeInteraction] = {}
        self._typing: dict[int, list[tuple[int, float]]] = {}
        self._files: dict[int, tuple[str, bytes]] = {}
        self._requests: Counter[tuple[str, str]] = Counter()
        self._rate_limits: dict[tuple[str, str], list[float]] = {}
        self._faults = FaultPlan()
        self._buckets: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._sessions: dict[str, gateway.GatewaySession] = {}
        self._connections: set[gateway.Connection] = set()
        self._identified_intents: int | None = None
        self._change = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._saved: tuple[str, yarl.URL] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    async def __aenter__(self) -> DiscordServer:
        app = web.Application(middlewares=[rest.middleware(self)], client_max_size=64 * 2**20)

        async def handle_gateway(request: web.Request) -> web.StreamResponse:
            return await gateway.handle_gateway(self, request)

        app.router.add_get("/gateway", handle_gateway)
        rest.add_routes(self, app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._saved = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
        discord.http.Route.BASE = self.api_url
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._saved is not None:
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = self._saved
            self._saved = None
        for connection in list(self._connections):
            await connection.close(1001, b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- waiting -------------------------------------------------------------------------------

    def _changed(self) -> None:
        """Wake every `wait_for`: called on each change of state a test could wait for."""
        self._change.set()
        self._change = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        """Return once `predicate()` is true; it is re-evaluated on every change of the server's
        state (messages, typing, interaction responses, commands, connections), never by polling,
        so it must depend on that state: to wait for something the client did with an event,
        use the client's own ``wait_for``. Raises TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout} s")
            change = self._change
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(change.wait(), remaining)

    async def wait_until_ready(self, timeout: float = 5.0) -> None:
        """Wait until a connected client has identified and received READY and GUILD_CREATEs."""
        await self.wait_for(self._has_ready_session, timeout=timeout)

    def _has_ready_session(self) -> bool:
        return any(s.ready and s.connection is not None for s in self._sessions.values())

    @property
    def connected(self) -> int:
        """How many sessions currently have an open gateway connection."""
        return sum(1 for s in self._sessions.values() if s.connection is not None)

    # -- building the world --------------------------------------------------------------------

    def create_user(self, name: str, *, bot: bool = False) -> FakeUser:
        user = FakeUser(self.snowflakes.next(), name, bot=bot)
        self._users[user.id] = user
        return user

    def create_guild(self, name: str = "Guild", *, owner: FakeUser | None = None) -> FakeGuild:
        """A guild with its @everyone role; the bot is a member. Call before the bot connects,
        or the bot only sees it on its next IDENTIFY."""
        owner = owner or self.create_user(f"{name}-owner")
        guild = FakeGuild(self.snowflakes.next(), name, owner.id)
        guild.roles[guild.id] = FakeRole(guild.id, "@everyone", guild.id, 0, EVERYONE_PERMISSIONS)
        self._guilds[guild.id] = guild
        for user in (owner, self.bot_user):
            guild.members[user.id] = FakeMember(user, guild.id)
        return guild

    def create_role(self, guild: FakeGuild, name: str, *, permissions: int = 0) -> FakeRole:
        role = FakeRole(self.snowflakes.next(), name, guild.id, len(guild.roles), permissions)
        guild.roles[role.id] = role
        return role

    def add_member(
        self,
        guild: FakeGuild,
        user: FakeUser,
        *,
        roles: Iterable[FakeRole] = (),
        nick: str | None = None,
    ) -> FakeMember:
        member = FakeMember(user, guild.id, [role.id for role in roles], nick)
        guild.members[user.id] = member
        return member

    def create_channel(self, guild: FakeGuild, name: str) -> FakeChannel:
        channel = FakeChannel(self.snowflakes.next(), name, guild_id=guild.id)
        self._add_channel(guild, channel)
        return channel

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
        the bot sees it either way, as Discord shows bots every public thread."""
        owner = owner or self.bot_user
        guild = self._guilds[_guild_id(channel)]
        thread = FakeChannel(
            self.snowflakes.next(),
            name,
            PRIVATE_THREAD if private else PUBLIC_THREAD,
            guild_id=guild.id,
            parent_id=channel.id,
            owner_id=owner.id,
            thread_members=list(dict.fromkeys([owner.id, *(m.id for m in members)])),
        )
        self._add_channel(guild, thread)
        return thread

    def create_dm(self, user: FakeUser) -> FakeChannel:
        """The DM channel between `user` and the bot (the same one every time)."""
        for channel in self._channels.values():
            if channel.type == DM and channel.recipient is user:
                return channel
        channel = FakeChannel(self.snowflakes.next(), "", DM, recipient=user)
        self._channels[channel.id] = channel
        return channel

    def _add_channel(self, guild: FakeGuild, channel: FakeChannel) -> None:
        guild.channels.append(channel)
        self._channels[channel.id] = channel

    def _bot_guilds(self) -> list[FakeGuild]:
        return [g for g in self._guilds.values() if self.bot_user.id in g.members]

    # -- lookups -------------------------------------------------------------------------------

    def channel(self, channel: ChannelRef) -> FakeChannel:
        return self._channels[_id(channel)]

    def user(self, user: UserRef) -> FakeUser:
        return self._users[_id(user)]

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
        return list(self._typing.get(_id(channel), []))

    def commands(self, guild: FakeGuild | None = None) -> list[dict[str, Any]]:
        """Application commands the bot registered, globally or in `guild`."""
        return list(self._commands.get(None if guild is None else guild.id, []))

    def interaction(self, token: str) -> FakeInteraction | None:
        return self._interactions.get(token)

    # -- REST accounting -----------------------------------------------------------------------

    def request_count(self, method: str, route: str) -> int:
        """REST requests seen for a route template like ``/channels/{channel_id}/messages``
        (rate-limited attempts included)."""
        return self._requests[(method.upper(), route)]

    def rate_limit(
        self, method: str, route: str, *, times: int = 1, retry_after: float = 0.2
    ) -> None:
        """Answer the next `times` requests to the route template with 429 Too Many Requests."""
        self._rate_limits[(method.upper(), route)] = [times, retry_after]

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
        key = (method.upper(), route)
        if key not in rest.route_keys():
            raise ValueError(f"the loopback server serves no route {method.upper()} {route}")
        self._faults.set(key, make_fault(status, times, seconds, after_effect, time.monotonic()))

    def clear_failures(self) -> None:
        """Forget every failure planned by `fail_requests`."""
        self._faults.clear()

    # -- acting as users -----------------------------------------------------------------------

    async def send_message(
        self,
        channel: ChannelRef,
        author: FakeUser,
        content: str = "",
        *,
        reply_to: dict[str, Any] | int | None = None,
        mentions_bot: bool = False,
        embeds: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Post as `author` and dispatch MESSAGE_CREATE. `mentions_bot` prefixes the bot's
        mention; a reply (`reply_to`: message dict or id) pings the replied-to author."""
        fake = self.channel(channel)
        self._check_can_post(fake, author)
        if mentions_bot:
            content = f"<@{self.bot_user.id}> {content}"
        reference = None
        if reply_to is not None:
            reference_id = int(reply_to["id"]) if isinstance(reply_to, dict) else int(reply_to)
            reference = {"message_id": str(reference_id)}
        message = self.create_message(
            fake,
            author,
            {"content": content, "embeds": embeds or []},
            reference=reference,
        )
        await self.dispatch_message("MESSAGE_CREATE", message)
        return message

    def _check_can_post(self, channel: FakeChannel, user: FakeUser) -> None:
        """Catch test mistakes Discord would refuse: posting where the user isn't."""
        if channel.type == DM:
            if user not in (channel.recipient, self.bot_user):
                raise ValueError(f"{user.name} is not in this DM channel")
        elif user.id not in self._guilds[_guild_id(channel)].members:
            raise ValueError(f"{user.name} is not a member of the channel's guild")

    async def edit_message(
        self, channel: ChannelRef, message_id: int | dict[str, Any], content: str
    ) -> dict[str, Any]:
        fake = self.channel(channel)
        message = self.update_message(fake, _msg_id(message_id), {"content": content})
        await self.dispatch_message("MESSAGE_UPDATE", message)
        return message

    async def delete_message(self, channel: ChannelRef, message_id: int | dict[str, Any]) -> None:
        fake = self.channel(channel)
        del fake.messages[_msg_id(message_id)]
        data = _channel_ref(fake) | {"id": str(_msg_id(message_id))}
        await self.dispatch_channel_event("MESSAGE_DELETE", fake, data)

    async def bulk_delete(
        self, channel: ChannelRef, message_ids: Iterable[int | dict[str, Any]]
    ) -> None:
        fake = self.channel(channel)
        ids = [_msg_id(m) for m in message_ids]
        for message_id in ids:
            del fake.messages[message_id]
        data = _channel_ref(fake) | {"ids": [str(i) for i in ids]}
        await self.dispatch_channel_event("MESSAGE_DELETE_BULK", fake, data)

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
        await self.dispatch("GUILD_MEMBER_UPDATE", data, intent=GUILD_MEMBERS)
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
        del guild.members[user.id]
        for thread in guild.channels:
            if thread.is_thread and user.id in thread.thread_members:
                thread.thread_members.remove(user.id)
                update = {
                    "id": str(thread.id),
                    "guild_id": str(guild.id),
                    "member_count": len(thread.thread_members),
                    "removed_member_ids": [str(user.id)],
                }
                await self.dispatch("THREAD_MEMBERS_UPDATE", update, intent=GUILDS)
        if user is self.bot_user:
            await self.dispatch("GUILD_DELETE", {"id": str(guild.id)}, intent=GUILDS)
        else:
            data = {"guild_id": str(guild.id), "user": user.to_json()}
            await self.dispatch("GUILD_MEMBER_REMOVE", data, intent=GUILD_MEMBERS)
        self._changed()

    async def start_typing(self, channel: ChannelRef, user: FakeUser) -> None:
        """`user` starts typing in the channel (TYPING_START); recorded in `typing_events`."""
        fake = self.channel(channel)
        self._check_can_post(fake, user)
        now = time.time()
        self._typing.setdefault(fake.id, []).append((user.id, now))
        data: dict[str, Any] = {
            "channel_id": str(fake.id),
            "user_id": str(user.id),
            "timestamp": int(now),
        }
        if fake.guild_id is not None:
            data["guild_id"] = str(fake.guild_id)
            data["member"] = self._guilds[fake.guild_id].members[user.id].to_json()
        intent = DIRECT_MESSAGE_TYPING if fake.type == DM else GUILD_MESSAGE_TYPING
        await self.dispatch("TYPING_START", data, intent=intent)
        self._changed()

    async def announce_channel(self, channel: FakeChannel) -> None:
        """Dispatch CHANNEL_CREATE / THREAD_CREATE for a channel made after the bot connected."""
        if channel.is_thread:
            await self.dispatch(
                "THREAD_CREATE", channel.to_json() | {"newly_created": True}, intent=GUILDS
            )
        else:
            await self.dispatch("CHANNEL_CREATE", channel.to_json(), intent=GUILDS)

    async def add_thread_members(self, thread: FakeChannel, users: Iterable[FakeUser]) -> None:
        """Add users to a thread and dispatch THREAD_MEMBERS_UPDATE."""
        added = [u.id for u in users if u.id not in thread.thread_members]
        thread.thread_members.extend(added)
        data = {
            "id": str(thread.id),
            "guild_id": str(thread.guild_id),
            "member_count": len(thread.thread_members),
            "added_members": [thread.thread_member_json(user_id) for user_id in added],
        }
        await self.dispatch("THREAD_MEMBERS_UPDATE", data, intent=GUILDS)

    async def invoke_command(
        self,
        channel: ChannelRef,
        user: FakeUser,
        name: str,
        options: dict[str, Any] | None = None,
    ) -> FakeInteraction:
        """Invoke the bot's registered slash command `name` as `user` (INTERACTION_CREATE);
        "group sub" names a subcommand. `options` maps option names to values (a FakeUser for
        user options). Raises LookupError when the bot registered no such command there."""
        fake = self.channel(channel)
        self._check_can_post(fake, user)
        guild = self._guilds.get(fake.guild_id) if fake.guild_id is not None else None
        command = interactions.find_command(self, guild, name.split()[0])
        if command is None:
            raise LookupError(f"the bot registered no command named {name!r} here")
        interaction = FakeInteraction(
            self.snowflakes.next(), secrets.token_urlsafe(32), name, fake, user, {}, self
        )
        interaction.payload = interactions.interaction_payload(
            self, interaction, command, options or {}
        )
        self._interactions[interaction.token] = interaction
        await self.dispatch("INTERACTION_CREATE", interaction.payload)
        return interaction

    async def drop_connections(self, *, resumable: bool = True) -> None:
        """Close every gateway websocket, as a network failure would. The clients reconnect and
        RESUME (getting the events dispatched meanwhile); with ``resumable=False`` their sessions
        are forgotten first, so the RESUME is answered INVALID_SESSION and they identify anew."""
        if not resumable:
            self._sessions.clear()
        for connection in list(self._connections):
            await connection.close(4000, b"dropped by the test")
        self._changed()

    # -- shared by REST handlers and the test API ----------------------------------------------

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
        """Store a new message built from a (validated) create-message body; returns its JSON."""
        content = body.get("content") or ""
        message_id = self.snowflakes.next()
        data: dict[str, Any] = {
            "id": str(message_id),
            "channel_id": str(channel.id),
            "author": author.to_json(),
            "content": content,
            "timestamp": iso_time(),
            "edited_timestamp": None,
            "tts": bool(body.get("tts", False)),
            "pinned": False,
            "type": 0,
            "flags": int(body.get("flags") or 0),
            "embeds": list(body.get("embeds") or []),
            "attachments": attachments or [],
            "components": list(body.get("components") or []),
        }
        if body.get("nonce") is not None:
            data["nonce"] = body["nonce"]
        if channel.guild_id is not None:
            data["guild_id"] = str(channel.guild_id)
        referenced = None
        if reference is not None:
            referenced = channel.messages.get(int(reference["message_id"]))
        if referenced is not None:
            data["type"] = REPLY
            data["message_reference"] = {
                "type": 0,
                "message_id": referenced["id"],
                "channel_id": str(channel.id),
            } | ({"guild_id": str(channel.guild_id)} if channel.guild_id else {})
            data["referenced_message"] = {
                k: v for k, v in referenced.items() if k != "referenced_message"
            }
        if extra:
            data.update(extra)
        self._set_mentions(data, body.get("allowed_mentions"), referenced)
        channel.messages[message_id] = data
        self._changed()
        return data

    def update_message(
        self, channel: FakeChannel, message_id: int, body: dict[str, Any]
    ) -> dict[str, Any]:
        data = channel.messages[message_id]
        for key in ("content", "embeds", "components", "flags", "attachments"):
            if key in body and body[key] is not None:
                data[key] = body[key]
        data["edited_timestamp"] = iso_time()
        referenced = data.get("referenced_message")
        self._set_mentions(data, body.get("allowed_mentions"), referenced)
        self._changed()
        return data

    def _set_mentions(
        self,
        data: dict[str, Any],
        allowed: dict[str, Any] | None,
        referenced: dict[str, Any] | None,
    ) -> None:
        """Fill in who the message pings, honouring `allowed_mentions` as Discord does."""
        content = data["content"]
        parse = ["users", "roles", "everyone"] if allowed is None else allowed.get("parse", [])
        allowed_users = {int(u) for u in (allowed or {}).get("users", [])}
        allowed_roles = {int(r) for r in (allowed or {}).get("roles", [])}
        users = [
            self._users[u]
            for u in mentioned_user_ids(content)
            if u in self._users and ("users" in parse or u in allowed_users)
        ]
        if referenced is not None and (allowed is None or allowed.get("replied_user", False)):
            replied = self._users.get(int(referenced["author"]["id"]))
            if replied is not None and replied not in users:
                users.append(replied)
        data["mentions"] = [u.to_json() for u in users]
        data["mention_roles"] = [
            str(r) for r in mentioned_role_ids(content) if "roles" in parse or r in allowed_roles
        ]
        data["mention_everyone"] = "everyone" in parse and (
            "@everyone" in content or "@here" in content
        )

    def sees_content(self, intents: int | None, message: dict[str, Any]) -> bool:
        """Whether a bot with these intents gets the message's content (Discord's rules)."""
        bot_id = str(self.bot_user.id)
        return (
            intents is None
            or bool(intents & MESSAGE_CONTENT_INTENT)
            or message["author"]["id"] == bot_id
            or "guild_id" not in message
            or any(user["id"] == bot_id for user in message.get("mentions", []))
        )

    async def dispatch_message(self, event: str, message: dict[str, Any]) -> None:
        channel = self._channels[int(message["channel_id"])]
        intent = DIRECT_MESSAGES if channel.type == DM else GUILD_MESSAGES
        data = dict(message)
        if channel.guild_id is not None:
            member = self._guilds[channel.guild_id].members.get(int(message["author"]["id"]))
            if member is not None:
                data["member"] = member.to_json(with_user=False)
        for session in list(self._sessions.values()):
            if session.wants(intent):
                seen = data if self.sees_content(session.intents, data) else blank_content(data)
                await session.dispatch(event, seen)

    async def dispatch_channel_event(
        self, event: str, channel: FakeChannel, data: dict[str, Any]
    ) -> None:
        intent = DIRECT_MESSAGES if channel.type == DM else GUILD_MESSAGES
        await self.dispatch(event, data, intent=intent)
        self._changed()

    async def dispatch(self, event: str, data: dict[str, Any], *, intent: int = 0) -> None:
        """Send a dispatch to every session whose intents include `intent` (0: to all)."""
        for session in list(self._sessions.values()):
            if not intent or session.wants(intent):
                await session.dispatch(event, data)


def _id(obj: Any) -> int:
    return int(obj) if isinstance(obj, (int, str)) else int(obj.id)


def _msg_id(message: int | dict[str, Any]) -> int:
    return int(message["id"]) if isinstance(message, dict) else int(message)


def _guild_id(channel: FakeChannel) -> int:
    if channel.guild_id is None:
        raise ValueError("threads live in guild channels, not DMs")
    return channel.guild_id


def _channel_ref(channel: FakeChannel) -> dict[str, Any]:
    data = {"channel_id": str(channel.id)}
    if channel.guild_id is not None:
        data["guild_id"] = str(channel.guild_id)
    return data


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
