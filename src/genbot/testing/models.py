"""The loopback server's data model: users, guilds, channels, messages, interactions, and their
Discord JSON; Discord's constants (intents, channel types).

Everything here is plain data. The JSON builders produce the shapes Discord's API v10 sends,
limited to the fields discord.py reads.
"""

from __future__ import annotations

import datetime
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .changes import Changes

__all__ = [
    "CATEGORY",
    "DIRECT_MESSAGES",
    "DIRECT_MESSAGE_TYPING",
    "DISCORD_EPOCH",
    "DM",
    "EPHEMERAL",
    "EVERYONE_PERMISSIONS",
    "GUILDS",
    "GUILD_MEMBERS",
    "GUILD_MESSAGES",
    "GUILD_MESSAGE_TYPING",
    "MESSAGE_CONTENT_INTENT",
    "PRIVATE_THREAD",
    "PRIVILEGED_INTENTS",
    "PUBLIC_THREAD",
    "TEXT",
    "FakeChannel",
    "FakeGuild",
    "FakeInteraction",
    "FakeMember",
    "FakeRole",
    "FakeUser",
    "Snowflakes",
    "Upload",
    "blank_content",
    "iso_time",
    "mentioned_role_ids",
    "mentioned_user_ids",
    "snowflake_time",
]

_log = logging.getLogger(__name__)

DISCORD_EPOCH = 1420070400000

# Gateway intents.
GUILDS, GUILD_MEMBERS, GUILD_PRESENCES = 1 << 0, 1 << 1, 1 << 8
GUILD_MESSAGES, GUILD_MESSAGE_TYPING = 1 << 9, 1 << 11
DIRECT_MESSAGES, DIRECT_MESSAGE_TYPING = 1 << 12, 1 << 14
MESSAGE_CONTENT_INTENT = 1 << 15
PRIVILEGED_INTENTS = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT_INTENT

# Permissions of @everyone: what a fresh server grants (view, send, history, threads, commands...).
EVERYONE_PERMISSIONS = (
    (1 << 6)
    | (1 << 10)
    | (1 << 11)
    | (1 << 14)
    | (1 << 15)
    | (1 << 16)
    | (1 << 18)
    | (1 << 31)
    | (1 << 35)
    | (1 << 36)
    | (1 << 38)
)

TEXT, DM, CATEGORY, PUBLIC_THREAD, PRIVATE_THREAD = 0, 1, 4, 11, 12
EPHEMERAL = 1 << 6  # message flag
THREAD_TYPES = (PUBLIC_THREAD, PRIVATE_THREAD)

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")


class Snowflakes:
    """Time-based ids as Discord makes them: milliseconds since 2015 in the top 42 bits."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        value = (int(time.time() * 1000) - DISCORD_EPOCH) << 22
        self._last = value if value > self._last else self._last + 1
        return self._last

    def next_on_shard(self, shard_id: int, shard_count: int) -> int:
        """The next id whose ``(id >> 22) % shard_count`` is `shard_id` (a guild on that shard):
        its timestamp is moved at most ``shard_count - 1`` ms ahead.

        Raises
        ------
        ValueError
            Not ``0 <= shard_id < shard_count``.
        """
        if not 0 <= shard_id < shard_count:
            raise ValueError(f"shard {shard_id} is not one of {shard_count} shards")
        stamp = self.next() >> 22
        stamp += (shard_id - stamp) % shard_count
        self._last = max(self._last, stamp << 22)
        return self._last


def snowflake_time(snowflake: int) -> float:
    """Unix time (seconds) at which a snowflake was made."""
    return ((snowflake >> 22) + DISCORD_EPOCH) / 1000


def iso_time(when: float | None = None) -> str:
    moment = time.time() if when is None else when
    return datetime.datetime.fromtimestamp(moment, datetime.timezone.utc).isoformat()


@dataclass(eq=False)
class FakeUser:
    id: int
    name: str
    bot: bool = False
    global_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
        }


@dataclass(eq=False)
class FakeRole:
    id: int
    name: str
    guild_id: int
    position: int = 0
    permissions: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }


@dataclass(eq=False)
class FakeMember:
    user: FakeUser
    guild_id: int
    roles: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = field(default_factory=iso_time)

    def to_json(self, *, with_user: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "roles": [str(role) for role in self.roles],
            "nick": self.nick,
            "avatar": None,
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.to_json()
        return data


@dataclass(eq=False)
class FakeChannel:
    """A guild text channel, a thread, a DM channel or a category (``type`` 4: it holds no
    messages; a text channel in it has its id as ``parent_id``, as on Discord); holds its
    messages, oldest first."""

    id: int
    name: str
    type: int = TEXT
    guild_id: int | None = None
    parent_id: int | None = None
    owner_id: int | None = None
    recipient: FakeUser | None = None
    thread_members: list[int] = field(default_factory=list)
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    # Discord's permission overwrites, as its JSON has them (see `permissions.set_overwrite`).
    overwrites: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_thread(self) -> bool:
        return self.type in THREAD_TYPES

    def to_json(self) -> dict[str, Any]:
        last = next(reversed(self.messages), None)
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "last_message_id": None if last is None else str(last),
            "flags": 0,
        }
        if self.type == DM:
            assert self.recipient is not None
            data["recipients"] = [self.recipient.to_json()]
            return data
        data.update(
            guild_id=str(self.guild_id),
            name=self.name,
            position=0,
            permission_overwrites=[dict(o) for o in self.overwrites],
            nsfw=False,
        )
        if self.type == CATEGORY:  # Discord sends a category without the text channel's fields
            del data["last_message_id"]
            data["parent_id"] = None
            return data
        data.update(
            rate_limit_per_user=0,
            parent_id=None if self.parent_id is None else str(self.parent_id),
            topic=None,
        )
        if self.is_thread:
            data.update(
                owner_id=str(self.owner_id),
                message_count=len(self.messages),
                member_count=len(self.thread_members),
                total_message_sent=len(self.messages),
                thread_metadata={
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": iso_time(),
                    "locked": False,
                    "invitable": True,
                    "create_timestamp": iso_time(snowflake_time(self.id)),
                },
            )
        return data

    def thread_member_json(self, user_id: int) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "user_id": str(user_id),
            "join_timestamp": iso_time(),
            "flags": 0,
        }


@dataclass(eq=False)
class FakeGuild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, FakeRole] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    channels: list[FakeChannel] = field(default_factory=list)

    def to_json(self, bot_id: int | None = None) -> dict[str, Any]:
        """The GUILD_CREATE payload: the guild with its roles, members, channels and threads
        (each thread the bot `bot_id` belongs to carries the bot's thread membership)."""
        threads = []
        for thread in self.channels:
            if thread.is_thread:
                data = thread.to_json()
                if bot_id in thread.thread_members:
                    data["member"] = thread.thread_member_json(bot_id)
                threads.append(data)
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [role.to_json() for role in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "joined_at": iso_time(snowflake_time(self.id)),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "members": [member.to_json() for member in self.members.values()],
            "channels": [c.to_json() for c in self.channels if not c.is_thread],
            "threads": threads,
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


def mentioned_user_ids(content: str) -> list[int]:
    """User ids mentioned as ``<@id>`` or ``<@!id>``, in order, without repeats."""
    return list(dict.fromkeys(int(match) for match in _USER_MENTION.findall(content)))


def mentioned_role_ids(content: str) -> list[int]:
    return list(dict.fromkeys(int(match) for match in _ROLE_MENTION.findall(content)))


def blank_content(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of a message as seen without the message-content intent."""
    blanked = dict(message, content="", embeds=[], attachments=[], components=[])
    blanked.pop("poll", None)
    if isinstance(blanked.get("referenced_message"), dict):
        blanked["referenced_message"] = blank_content(blanked["referenced_message"])
    return blanked


class Upload(NamedTuple):
    """A file part of a multipart request: ``files[number]``."""

    number: int
    filename: str
    content_type: str
    data: bytes


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
    changes: Changes
    responses: list[dict[str, Any]] = field(default_factory=list)
    original: dict[str, Any] | None = None
    deferred: bool = False
    ephemeral: bool = False

    @property
    def acknowledged(self) -> bool:
        return any(r["kind"] == "callback" for r in self.responses)

    def record(
        self,
        kind: str,
        body: dict[str, Any],
        message: dict[str, Any] | None,
        callback_type: int | None = None,
    ) -> None:
        """Add one of the bot's answers to `responses` (and wake waiters)."""
        self.responses.append(
            {
                "kind": kind,
                "type": callback_type,
                "content": None if message is None else message["content"],
                "ephemeral": bool(message is not None and message["flags"] & EPHEMERAL),
                "message": message,
                "payload": body,
            }
        )
        self.changes.notify()

    async def wait_response(self, timeout: float = 5.0, index: int = 0) -> dict[str, Any]:
        """The `index`-th response (0: the first callback), waiting for it up to `timeout` s.

        Raises
        ------
        TimeoutError
            No such response within `timeout` seconds.
        """
        await self.changes.wait_for(lambda: len(self.responses) > index, timeout=timeout)
        return self.responses[index]
