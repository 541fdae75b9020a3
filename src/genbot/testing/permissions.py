"""Permissions in the loopback Discord: channel overwrites, Discord's computation of a member's
permissions in a channel, and the routes that report them (the bot's guild list with its
permissions, the application with its flags).

By default nothing changes: every guild's @everyone role has `EVERYONE_PERMISSIONS` (what a
fresh server grants) and no channel has an overwrite. The bot's own requests are refused as on
Discord when it lacks a permission (`require`): posting, typing, opening threads; its history
requests find no messages without Read Message History. Tests take permissions away with a role
(`DiscordServer.create_role` with ``permissions=``), by changing @everyone's ``permissions``, or
with `set_overwrite`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .models import FakeChannel, FakeGuild, FakeRole, FakeUser
from .payloads import ApiError, json_response
from .routes import Route

if TYPE_CHECKING:
    from .state import ServerState

__all__ = [
    "ADMINISTRATOR",
    "ALL_PERMISSIONS",
    "ROUTES",
    "VIEW_CHANNEL",
    "can_read_history",
    "channel_permissions",
    "guild_permissions",
    "require",
    "set_overwrite",
    "to_send",
]

_log = logging.getLogger(__name__)

ADMINISTRATOR = 1 << 3
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
CREATE_PUBLIC_THREADS = 1 << 35
CREATE_PRIVATE_THREADS = 1 << 36
SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = (1 << 51) - 1
ROLE, MEMBER = 0, 1  # overwrite types


def set_overwrite(
    state: ServerState,
    channel: FakeChannel,
    target: FakeRole | FakeUser,
    *,
    allow: int = 0,
    deny: int = 0,
) -> dict[str, Any]:
    """Set (or, with nothing allowed or denied, remove) the overwrite of a role or member in a
    guild channel, and dispatch CHANNEL_UPDATE as Discord does; returns the overwrite JSON.

    Raises
    ------
    ValueError
        A DM or thread (they have no overwrites), or a role of another guild.
    """
    if channel.guild_id is None or channel.is_thread:
        raise ValueError("only a guild's (non-thread) channels have permission overwrites")
    if isinstance(target, FakeRole) and target.guild_id != channel.guild_id:
        raise ValueError(f"role {target.name!r} belongs to another guild")
    kind = ROLE if isinstance(target, FakeRole) else MEMBER
    overwrite = {"id": str(target.id), "type": kind, "allow": str(allow), "deny": str(deny)}
    channel.overwrites[:] = [o for o in channel.overwrites if o["id"] != str(target.id)]
    if allow or deny:
        channel.overwrites.append(overwrite)
    state.dispatch_nowait("CHANNEL_UPDATE", channel.to_json(), intent=1)  # GUILDS
    state.changed()
    return overwrite


def guild_permissions(guild: FakeGuild, user_id: int) -> int:
    """A member's permissions in the guild: the owner and administrators have all, others the
    union of @everyone's and their roles' (0 for someone who is not a member)."""
    member = guild.members.get(user_id)
    if member is None:
        return 0
    if user_id == guild.owner_id:
        return ALL_PERMISSIONS
    everyone = guild.roles.get(guild.id)
    permissions = 0 if everyone is None else everyone.permissions
    for role_id in member.roles:
        role = guild.roles.get(role_id)
        if role is not None:
            permissions |= role.permissions
    return ALL_PERMISSIONS if permissions & ADMINISTRATOR else permissions


def channel_permissions(guild: FakeGuild, channel: FakeChannel, user_id: int) -> int:
    """A member's permissions in a channel, as Discord computes them: the guild permissions,
    then the @everyone overwrite, the member's roles' overwrites (denies, then allows), and
    the member's own; a thread has its parent's. Without View Channel a member has none."""
    if channel.is_thread and channel.parent_id is not None:
        parent = next((c for c in guild.channels if c.id == channel.parent_id), None)
        if parent is not None:
            channel = parent
    permissions = guild_permissions(guild, user_id)
    if permissions & ADMINISTRATOR or not permissions:
        return permissions
    by_id = {int(o["id"]): o for o in channel.overwrites}
    member = guild.members[user_id]

    def apply(overwrites: list[dict[str, Any]], value: int) -> int:
        deny = allow = 0
        for overwrite in overwrites:
            deny |= int(overwrite["deny"])
            allow |= int(overwrite["allow"])
        return (value & ~deny) | allow

    everyone = by_id.get(guild.id)
    permissions = apply([] if everyone is None else [everyone], permissions)
    roles = [by_id[r] for r in member.roles if r in by_id and by_id[r]["type"] == ROLE]
    permissions = apply(roles, permissions)
    own = by_id.get(user_id)
    if own is not None and own["type"] == MEMBER:
        permissions = apply([own], permissions)
    return permissions if permissions & VIEW_CHANNEL else 0


# -- what the bot's requests need ----------------------------------------------------------------


def require(state: ServerState, channel: FakeChannel, needed: int) -> None:
    """Refuse a request of the bot's in a guild channel as Discord does when it lacks a
    permission: 50001 Missing Access without View Channel, else 50013 Missing Permissions
    when one of `needed` is missing. DMs need nothing.

    Raises
    ------
    ApiError
        The bot lacks a permission.
    """
    guild = state.guild_of(channel)
    if guild is None:
        return
    have = channel_permissions(guild, channel, state.bot_user.id)
    if not have & VIEW_CHANNEL:
        raise ApiError(403, 50001, "Missing Access")
    if needed & ~have:
        raise ApiError(403, 50013, "Missing Permissions")


def can_read_history(state: ServerState, channel: FakeChannel) -> bool:
    """Without Read Message History, Discord answers the bot's history requests with no
    messages."""
    guild = state.guild_of(channel)
    have = (
        ALL_PERMISSIONS if guild is None else channel_permissions(guild, channel, state.bot_user.id)
    )
    return bool(have & READ_MESSAGE_HISTORY)


def to_send(channel: FakeChannel, files: bool) -> int:
    """What posting a message in `channel` needs (with `files`: attachments too)."""
    send = SEND_MESSAGES_IN_THREADS if channel.is_thread else SEND_MESSAGES
    return send | (ATTACH_FILES if files else 0)


# -- routes --------------------------------------------------------------------------------------


async def bot_guilds(state: ServerState, request: web.Request) -> web.Response:
    """``GET /users/@me/guilds``: the bot's guilds as partial guilds, with its permissions."""
    bot_id = state.bot_user.id
    try:
        limit = min(200, max(1, int(request.query.get("limit", 200))))
        after = int(request.query.get("after", 0))
        before = int(request.query.get("before", 0)) or None
    except ValueError:
        return json_response({"message": "Invalid Form Body", "code": 50035}, 400)
    guilds = sorted(state.bot_guilds(), key=lambda g: g.id)
    chosen = [g for g in guilds if g.id > after and (before is None or g.id < before)]
    chosen = chosen[-limit:] if before is not None and not after else chosen[:limit]
    return json_response(
        [
            {
                "id": str(guild.id),
                "name": guild.name,
                "icon": None,
                "banner": None,
                "owner": guild.owner_id == bot_id,
                "permissions": str(guild_permissions(guild, bot_id)),
                "features": [],
                "approximate_member_count": len(guild.members),
                "approximate_presence_count": 0,
            }
            for guild in chosen
        ]
    )


async def get_application(state: ServerState, request: web.Request) -> web.Response:
    """``GET /applications/@me``: the same application ``/oauth2/applications/@me`` shows."""
    from .rest import get_application as application

    return await application(state, request)


ROUTES: list[Route] = [
    Route("GET", "/users/@me/guilds", bot_guilds),
    Route("GET", "/applications/@me", get_application),
]
