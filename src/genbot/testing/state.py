"""`ServerState`: everything the loopback Discord knows, and the operations on it that the REST,
gateway and interaction handlers share (as discord.py's ``ConnectionState`` is for its parsers).

Handlers receive the state, never the `DiscordServer`; the server's test-facing API is a thin
layer over it. To add a feature (components, permissions, shards), add its data here and its
handlers as a route table in a module of their own.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .changes import Changes
from .limits import RequestLedger
from .models import (
    DIRECT_MESSAGE_TYPING,
    DIRECT_MESSAGES,
    DM,
    GUILD_MEMBERS,
    GUILD_MESSAGE_TYPING,
    GUILD_MESSAGES,
    GUILDS,
    MESSAGE_CONTENT_INTENT,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMember,
    FakeUser,
    Snowflakes,
    Upload,
    blank_content,
    iso_time,
    mentioned_role_ids,
    mentioned_user_ids,
)
from .sharding import SessionStartLimit, event_guild_id

if TYPE_CHECKING:
    from .gateway import Connection, GatewaySession

__all__ = ["REPLY", "ServerState"]

_log = logging.getLogger(__name__)

REPLY = 19  # message type of a reply
# The application flags GATEWAY_MESSAGE_CONTENT_LIMITED | ..._GUILD_MEMBERS_LIMITED |
# ..._PRESENCE_LIMITED: the portal's switches for the privileged intents.
PRIVILEGED_INTENT_FLAGS = (1 << 19) | (1 << 15) | (1 << 13)


class ServerState:
    """The loopback Discord's state: its settings, the world (users, guilds, channels with their
    messages, commands, interactions), REST accounting and gateway sessions.

    The world's dicts are public for reading; change them through the methods, which keep the
    indexes together, dispatch the gateway events Discord would, and wake `wait_for`.
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
        session_start_limit: SessionStartLimit | None = None,
    ) -> None:
        if shard_count < 1:
            raise ValueError(f"shard_count must be >= 1, got {shard_count!r}")
        self.snowflakes = Snowflakes()
        self.token = secrets.token_urlsafe(24)
        self.application_id = self.snowflakes.next()
        # The portal's switches for the privileged intents (members, presences, message content);
        # when off, an IDENTIFY asking for one is closed with 4014, as on Discord.
        self.privileged_intents = privileged_intents
        self.heartbeat_interval = heartbeat_interval
        self.bot_user = FakeUser(self.application_id, bot_name, bot=True)
        self.port = 0  # set once the server listens
        # The world.
        self.users: dict[int, FakeUser] = {self.bot_user.id: self.bot_user}
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.commands: dict[int | None, list[dict[str, Any]]] = {}  # by guild id (None: global)
        self.interactions: dict[str, FakeInteraction] = {}  # by token
        self.typing: dict[int, list[tuple[int, float]]] = {}  # channel id: (user id, time)
        self.files: dict[int, tuple[str, bytes]] = {}  # attachment id: (content type, bytes)
        # REST.
        self.requests = RequestLedger(ratelimit_limit, ratelimit_window)
        self.unhandled_requests: list[tuple[str, str]] = []
        # Gateway.
        self.sessions: dict[str, GatewaySession] = {}
        self.connections: set[Connection] = set()
        self.identified_intents: int | None = None  # of the last IDENTIFY
        self.resumes = 0
        self.gateway_queries: list[dict[str, str]] = []  # query of each connection
        # Sharding: the shard count /gateway/bot recommends (and `create_guild(shard=)` uses),
        # the IDENTIFY budget, and the shard of each IDENTIFY refused by it.
        self.shard_count = shard_count
        self.session_start_limit = session_start_limit or SessionStartLimit()
        self.refused_identifies: list[tuple[int, int] | None] = []
        # Heartbeat ACKs by the shard of the session (None: unsharded or not identified yet),
        # and seconds by which the ACKs of identified sessions of a shard are held back.
        self.heartbeat_acks: dict[tuple[int, int] | None, int] = {}
        self.ack_delays: dict[tuple[int, int] | None, float] = {}
        self.changes = Changes()

    # -- settings ------------------------------------------------------------------------------

    @property
    def application_flags(self) -> int:
        return PRIVILEGED_INTENT_FLAGS if self.privileged_intents else 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # -- changes -------------------------------------------------------------------------------

    def changed(self) -> None:
        """Wake every `wait_for`: call after each change of state a test could wait for."""
        self.changes.notify()

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        """Return once `predicate()` is true, re-evaluated on each `changed`.

        Raises
        ------
        TimeoutError
            Still false after `timeout` seconds.
        """
        await self.changes.wait_for(predicate, timeout)

    # -- the world -----------------------------------------------------------------------------

    def add_user(self, user: FakeUser) -> FakeUser:
        self.users[user.id] = user
        return user

    def add_guild(self, guild: FakeGuild) -> FakeGuild:
        """Index a guild. When the bot is a member, connected sessions get its GUILD_CREATE (as
        when a bot joins a guild), queued at once so that it precedes any later event."""
        self.guilds[guild.id] = guild
        if self.bot_user.id in guild.members:
            data = guild.to_json(self.bot_user.id)
            # A join's GUILD_CREATE has no "unavailable": false (that marks an outage's end).
            del data["unavailable"]
            self.dispatch_nowait("GUILD_CREATE", data, intent=GUILDS)
        self.changed()
        return guild

    def add_channel(self, guild: FakeGuild | None, channel: FakeChannel) -> FakeChannel:
        """Index a channel (in `guild`, or a DM when None)."""
        if guild is not None:
            guild.channels.append(channel)
        self.channels[channel.id] = channel
        self.changed()
        return channel

    def guild_of(self, channel: FakeChannel) -> FakeGuild | None:
        return None if channel.guild_id is None else self.guilds[channel.guild_id]

    def member(self, channel: FakeChannel, user_id: int) -> FakeMember | None:
        """The member `user_id` of the channel's guild (None in a DM or when not a member)."""
        guild = self.guild_of(channel)
        return None if guild is None else guild.members.get(user_id)

    def bot_guilds(self) -> list[FakeGuild]:
        return [g for g in self.guilds.values() if self.bot_user.id in g.members]

    def bot_can_access(self, channel: FakeChannel) -> bool:
        guild = self.guild_of(channel)
        return guild is None or self.bot_user.id in guild.members

    def dm_channel(self, user: FakeUser) -> FakeChannel:
        """The DM channel between `user` and the bot (made on first use)."""
        for channel in self.channels.values():
            if channel.type == DM and channel.recipient is user:
                return channel
        return self.add_channel(None, FakeChannel(self.snowflakes.next(), "", DM, recipient=user))

    def set_commands(self, scope: int | None, commands: list[dict[str, Any]]) -> None:
        """Replace the bot's application commands, globally (None) or in guild `scope`."""
        self.commands[scope] = commands
        self.changed()

    def find_command(self, guild: FakeGuild | None, name: str) -> dict[str, Any] | None:
        """The registered chat-input command `name` for a channel of `guild` (None: a DM)."""
        scopes = ([guild.id] if guild is not None else []) + [None]
        for scope in scopes:
            for command in self.commands.get(scope, []):
                if command["name"] == name and command["type"] == 1:
                    return command
        return None

    def store_file(self, channel: FakeChannel, upload: Upload, name: str) -> dict[str, Any]:
        """Keep an uploaded file for the CDN route; its attachment JSON without description."""
        attachment_id = self.snowflakes.next()
        self.files[attachment_id] = (upload.content_type, upload.data)
        url = f"{self.base_url}/attachments/{channel.id}/{attachment_id}/{name}"
        return {
            "id": str(attachment_id),
            "filename": name,
            "size": len(upload.data),
            "url": url,
            "proxy_url": url,
            "content_type": upload.content_type,
        }

    # -- messages ------------------------------------------------------------------------------

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
        self.changed()
        return data

    def update_message(
        self, channel: FakeChannel, message_id: int, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Apply an edit body to a stored message; returns its JSON."""
        data = channel.messages[message_id]
        for key in ("content", "embeds", "components", "flags", "attachments"):
            if key in body and body[key] is not None:
                data[key] = body[key]
        data["edited_timestamp"] = iso_time()
        referenced = data.get("referenced_message")
        self._set_mentions(data, body.get("allowed_mentions"), referenced)
        self.changed()
        return data

    async def delete_messages(self, channel: FakeChannel, message_ids: list[int]) -> None:
        """Remove messages and dispatch MESSAGE_DELETE (one) or MESSAGE_DELETE_BULK (several).

        Raises
        ------
        KeyError
            A message is not in the channel (nothing is removed then).
        """
        missing = [i for i in message_ids if i not in channel.messages]
        if missing:
            raise KeyError(f"no message {missing[0]} in channel {channel.id}")
        for message_id in message_ids:
            del channel.messages[message_id]
        data: dict[str, Any] = {"channel_id": str(channel.id)}
        if channel.guild_id is not None:
            data["guild_id"] = str(channel.guild_id)
        if len(message_ids) == 1:
            event, data["id"] = "MESSAGE_DELETE", str(message_ids[0])
        else:
            event, data["ids"] = "MESSAGE_DELETE_BULK", [str(i) for i in message_ids]
        await self.dispatch(event, data, intent=_message_intent(channel))
        self.changed()

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
            self.users[u]
            for u in mentioned_user_ids(content)
            if u in self.users and ("users" in parse or u in allowed_users)
        ]
        if referenced is not None and (allowed is None or allowed.get("replied_user", False)):
            replied = self.users.get(int(referenced["author"]["id"]))
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

    def visible(self, message: dict[str, Any]) -> dict[str, Any]:
        """A message as REST shows it to the bot: blanked like the gateway when the bot's last
        IDENTIFY lacked the message-content intent."""
        if self.sees_content(self.identified_intents, message):
            return message
        return blank_content(message)

    # -- typing and threads --------------------------------------------------------------------

    async def start_typing(self, channel: FakeChannel, user: FakeUser) -> None:
        """Record a typing trigger and dispatch TYPING_START."""
        now = time.time()
        self.typing.setdefault(channel.id, []).append((user.id, now))
        data: dict[str, Any] = {
            "channel_id": str(channel.id),
            "user_id": str(user.id),
            "timestamp": int(now),
        }
        if channel.guild_id is not None:
            data["guild_id"] = str(channel.guild_id)
            member = self.member(channel, user.id)
            if member is not None:
                data["member"] = member.to_json()
        intent = DIRECT_MESSAGE_TYPING if channel.type == DM else GUILD_MESSAGE_TYPING
        await self.dispatch("TYPING_START", data, intent=intent)
        self.changed()

    async def add_thread_members(self, thread: FakeChannel, user_ids: list[int]) -> None:
        """Add users to a thread and dispatch THREAD_MEMBERS_UPDATE."""
        added = [u for u in dict.fromkeys(user_ids) if u not in thread.thread_members]
        thread.thread_members.extend(added)
        data = {
            "id": str(thread.id),
            "guild_id": str(thread.guild_id),
            "member_count": len(thread.thread_members),
            "added_members": [thread.thread_member_json(user_id) for user_id in added],
        }
        await self.dispatch("THREAD_MEMBERS_UPDATE", data, intent=GUILDS)
        self.changed()

    async def remove_thread_member(self, thread: FakeChannel, user_id: int) -> None:
        """Take a user out of a thread (THREAD_MEMBERS_UPDATE); nothing if not in it."""
        if user_id not in thread.thread_members:
            return
        thread.thread_members.remove(user_id)
        data = {
            "id": str(thread.id),
            "guild_id": str(thread.guild_id),
            "member_count": len(thread.thread_members),
            "removed_member_ids": [str(user_id)],
        }
        await self.dispatch("THREAD_MEMBERS_UPDATE", data, intent=GUILDS)
        self.changed()

    # -- members -------------------------------------------------------------------------------

    def add_member(self, guild: FakeGuild, member: FakeMember) -> FakeMember:
        """Make (or replace) a member; someone new joining reaches connected bots with the
        members intent as GUILD_MEMBER_ADD."""
        joined = member.user.id not in guild.members
        guild.members[member.user.id] = member
        if joined:
            data = member.to_json() | {"guild_id": str(guild.id)}
            self.dispatch_nowait("GUILD_MEMBER_ADD", data, intent=GUILD_MEMBERS)
        self.changed()
        return member

    async def remove_member(self, guild: FakeGuild, user: FakeUser) -> None:
        """`user` leaves `guild`: out of its members and threads; GUILD_MEMBER_REMOVE, or
        GUILD_DELETE when the bot is the one removed (kicked)."""
        guild.members.pop(user.id, None)
        _log.debug("%s left guild %s", user.name, guild.name)
        for thread in list(guild.channels):
            if thread.is_thread:
                await self.remove_thread_member(thread, user.id)
        if user is self.bot_user:
            await self.dispatch("GUILD_DELETE", {"id": str(guild.id)}, intent=GUILDS)
        else:
            data = {"guild_id": str(guild.id), "user": user.to_json()}
            await self.dispatch("GUILD_MEMBER_REMOVE", data, intent=GUILD_MEMBERS)
        self.changed()

    # -- gateway sessions ----------------------------------------------------------------------

    def open_session(self, session: GatewaySession) -> None:
        """Register a freshly identified session."""
        self.sessions[session.id] = session
        self.identified_intents = session.intents
        _log.debug("session %s identified (intents %#x)", session.id, session.intents)
        self.changed()

    def end_session(self, session_id: str) -> None:
        """Forget a session: a RESUME of it is answered INVALID_SESSION."""
        if self.sessions.pop(session_id, None) is not None:
            _log.debug("session %s ended", session_id)
        self.changed()

    def has_ready_session(self) -> bool:
        return any(s.ready and s.connection is not None for s in self.sessions.values())

    @property
    def connected(self) -> int:
        """How many sessions currently have an open gateway connection."""
        return sum(1 for s in self.sessions.values() if s.connection is not None)

    # -- dispatching ---------------------------------------------------------------------------

    async def dispatch(self, event: str, data: dict[str, Any], *, intent: int = 0) -> None:
        """Send a dispatch to every session whose intents include `intent` (0: to all); returns
        once it went out (so a REST answer follows the events the request caused)."""
        self.dispatch_nowait(event, data, intent=intent)
        await self.flush()

    async def flush(self) -> None:
        """Wait until every live connection sent what is queued for it."""
        for session in list(self.sessions.values()):
            if session.connection is not None:
                await session.connection.flush()

    def dispatch_nowait(self, event: str, data: dict[str, Any], *, intent: int = 0) -> None:
        """`dispatch` from synchronous code: the events are numbered and queued at once, in
        order with every other dispatch, and go out as soon as the loop runs. Each goes only to
        the sessions of the shard its guild is on (a DM's to shard 0), as Discord routes them."""
        guild_id = event_guild_id(event, data)
        for session in list(self.sessions.values()):
            if (not intent or session.wants(intent)) and session.receives(guild_id):
                session.dispatch(event, data)

    async def dispatch_message(self, event: str, message: dict[str, Any]) -> None:
        """MESSAGE_CREATE / MESSAGE_UPDATE, with the author's member and the content blanked
        for sessions without the message-content intent."""
        channel = self.channels[int(message["channel_id"])]
        data = dict(message)
        member = self.member(channel, int(message["author"]["id"]))
        if member is not None:
            data["member"] = member.to_json(with_user=False)
        for session in list(self.sessions.values()):
            if session.wants(_message_intent(channel)) and session.receives(channel.guild_id):
                seen = data if self.sees_content(session.intents, data) else blank_content(data)
                session.dispatch(event, seen)
        await self.flush()


def _message_intent(channel: FakeChannel) -> int:
    return DIRECT_MESSAGES if channel.type == DM else GUILD_MESSAGES
