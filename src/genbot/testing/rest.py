"""The REST half of the loopback server (API v10): the routes discord.py uses for a chat bot,
with Discord's status codes, error JSON and rate-limit headers."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .state import (
    DM,
    PRIVATE_THREAD,
    PUBLIC_THREAD,
    FakeChannel,
    FakeGuild,
    blank_content,
    iso_time,
)

if TYPE_CHECKING:
    from .server import DiscordServer, FakeInteraction

__all__ = ["ApiError", "add_routes", "find_command", "interaction_payload", "middleware"]

PREFIX = "/api/v10"
MAX_CONTENT = 2000
EPHEMERAL, LOADING = 1 << 6, 1 << 7
CHAT_INPUT_COMMAND, THREAD_CREATED = 20, 18
GUILDS = 1 << 0
# Interaction callback types.
CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE = 4, 5, 6, 7
ALL_PERMISSIONS = (1 << 53) - 1

Handler = Callable[["DiscordServer", web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answered as Discord does: ``{"message", "code"[, "errors"]}`` with a status."""

    def __init__(self, status: int, code: int, message: str, errors: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return json_response(body, self.status)


def form_error(field: str, code: str, message: str) -> ApiError:
    """Discord's 50035 Invalid Form Body, with the errors tree for one field."""
    errors = {field: {"_errors": [{"code": code, "message": message}]}}
    return ApiError(400, 50035, "Invalid Form Body", errors)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # Exactly "application/json": discord.py only parses JSON when the header is that string.
    return web.Response(
        body=json.dumps(data).encode(), status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def no_content() -> web.Response:
    return web.Response(status=204)


def unknown_channel() -> ApiError:
    return ApiError(404, 10003, "Unknown Channel")


def unknown_message() -> ApiError:
    return ApiError(404, 10008, "Unknown Message")


# -- middleware: accounting, rate limits, auth ---------------------------------------------------


def middleware(server: DiscordServer) -> Any:
    @web.middleware
    async def discord_middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.startswith(PREFIX + "/"):
            return await handler(request)
        resource = request.match_info.route.resource
        if resource is None or resource.name == "unhandled":
            return await handler(request)
        route = resource.canonical[len(PREFIX):]
        key = (request.method, route)
        server._requests[key] += 1
        bucket = hashlib.sha1(f"{request.method} {route}".encode()).hexdigest()[:16]
        major = next(iter(request.match_info.values()), "")
        used, reset_after = _consume(server, (request.method, route, major))
        limited = server._rate_limits.get(key)
        if limited is not None and limited[0] > 0:
            limited[0] -= 1
            return _too_many_requests(server, bucket, limited[1])
        if used > server.ratelimit_limit:
            return _too_many_requests(server, bucket, reset_after)
        token_free = route.startswith(("/interactions/", "/webhooks/"))
        if not token_free and request.headers.get("Authorization") != f"Bot {server.token}":
            return json_response({"message": "401: Unauthorized", "code": 0}, 401)
        try:
            response = await handler(request)
        except ApiError as error:
            response = error.response()
        remaining = server.ratelimit_limit - used
        response.headers.update(_ratelimit_headers(server, bucket, remaining, reset_after))
        server._changed()  # request counts are state a test may wait on
        return response

    return discord_middleware


def _consume(server: DiscordServer, key: tuple[str, str, str]) -> tuple[int, float]:
    """Count a request in its bucket's window: (requests in this window, seconds to its reset)."""
    now = time.monotonic()
    reset_at, used = server._buckets.get(key, (0.0, 0))
    if now >= reset_at:
        reset_at, used = now + server.ratelimit_window, 0
    used += 1
    server._buckets[key] = (reset_at, used)
    return used, reset_at - now


def _too_many_requests(server: DiscordServer, bucket: str, retry_after: float) -> web.Response:
    """Discord's 429: JSON body, rate-limit headers, and the ``Via`` header of Discord's proxy
    (without it discord.py takes a 429 for a Cloudflare ban and gives up)."""
    headers = _ratelimit_headers(server, bucket, 0, retry_after) | {
        "Via": "1.1 google", "Retry-After": str(max(1, round(retry_after))),
        "X-RateLimit-Scope": "user",
    }
    body = {"message": "You are being rate limited.", "retry_after": round(retry_after, 3),
            "global": False}
    server._changed()
    return json_response(body, 429, headers)


def _ratelimit_headers(
    server: DiscordServer, bucket: str, remaining: int, reset_after: float
) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(server.ratelimit_limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
        # Rounded up, so a client never comes back before the window has really reset.
        "X-RateLimit-Reset-After": f"{math.ceil(reset_after * 1000) / 1000:.3f}",
        "X-RateLimit-Bucket": bucket,
    }


# -- request helpers -----------------------------------------------------------------------------


async def read_body(server: DiscordServer, request: web.Request) -> tuple[dict[str, Any], list]:
    """The JSON body, from JSON or multipart (``payload_json`` + ``files[n]``); and the files as
    (index, filename, content type, bytes)."""
    if request.content_type == "multipart/form-data":
        body: dict[str, Any] = {}
        files = []
        reader = await request.multipart()
        async for part in reader:
            name = part.name or ""
            if name == "payload_json":
                body = json.loads(await part.text())
            elif name.startswith("files["):
                index = int(name[len("files["):-1])
                data = await part.read()
                content_type = part.headers.get("Content-Type", "application/octet-stream")
                files.append((index, part.filename or f"file{index}", content_type, bytes(data)))
        return body, files
    if not request.can_read_body:
        return {}, []
    try:
        return json.loads(await request.text()), []
    except ValueError as error:
        raise ApiError(400, 50109, "The request body contains invalid JSON.") from error


def _channel(server: DiscordServer, request: web.Request) -> FakeChannel:
    channel = server._channels.get(_int(request.match_info["channel_id"]))
    if channel is None:
        raise unknown_channel()
    if channel.guild_id is not None and server.bot_user.id not in server._guilds[
        channel.guild_id
    ].members:
        raise ApiError(403, 50001, "Missing Access")
    return channel


def _message(channel: FakeChannel, request: web.Request) -> dict[str, Any]:
    message = channel.messages.get(_int(request.match_info["message_id"]))
    if message is None:
        raise unknown_message()
    return message


def _guild(server: DiscordServer, request: web.Request) -> FakeGuild:
    guild = server._guilds.get(_int(request.match_info["guild_id"]))
    if guild is None:
        raise ApiError(404, 10004, "Unknown Guild")
    return guild


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError as error:
        message = f"Value \"{value}\" is not snowflake."
        raise form_error("id", "NUMBER_TYPE_COERCE", message) from error


def _visible(server: DiscordServer, message: dict[str, Any]) -> dict[str, Any]:
    """A message as REST shows it to the bot: blanked like the gateway when the bot's last
    IDENTIFY lacked the message-content intent."""
    if server.sees_content(server._identified_intents, message):
        return message
    return blank_content(message)


def _validate_message(body: dict[str, Any], files: list, *, editing: bool = False) -> None:
    content = body.get("content")
    if content is not None and len(content) > MAX_CONTENT:
        raise form_error("content", "BASE_TYPE_MAX_LENGTH",
                         f"Must be {MAX_CONTENT} or fewer in length.")
    if editing:
        return
    if not ((content or "").strip() or body.get("embeds") or files or body.get("sticker_ids")
            or body.get("components") or body.get("poll") or body.get("attachments")):
        raise ApiError(400, 50006, "Cannot send an empty message")


def _attachments(
    server: DiscordServer, channel: FakeChannel, body: dict[str, Any], files: list
) -> list[dict[str, Any]]:
    described = {int(a["id"]): a for a in body.get("attachments") or [] if "id" in a}
    made = []
    for index, filename, content_type, data in sorted(files):
        attachment_id = server.snowflakes.next()
        name = described.get(index, {}).get("filename", filename)
        server._files[attachment_id] = (content_type, data)
        url = f"{server.base_url}/attachments/{channel.id}/{attachment_id}/{name}"
        made.append({
            "id": str(attachment_id), "filename": name, "size": len(data), "url": url,
            "proxy_url": url, "content_type": content_type,
            "description": described.get(index, {}).get("description"),
        })
    return made


def _reference(channel: FakeChannel, body: dict[str, Any]) -> dict[str, Any] | None:
    reference = body.get("message_reference")
    if not reference or reference.get("message_id") is None:
        return None
    if int(reference["message_id"]) not in channel.messages:
        if reference.get("fail_if_not_exists", True):
            raise form_error("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                             "Unknown message")
        return None
    return reference


# -- users, application, gateway -----------------------------------------------------------------


async def get_me(server: DiscordServer, request: web.Request) -> web.Response:
    return json_response(server.bot_user.to_json() | {"verified": True, "mfa_enabled": False})


async def get_user(server: DiscordServer, request: web.Request) -> web.Response:
    user = server._users.get(_int(request.match_info["user_id"]))
    if user is None:
        raise ApiError(404, 10013, "Unknown User")
    return json_response(user.to_json())


async def get_application(server: DiscordServer, request: web.Request) -> web.Response:
    return json_response({
        "id": str(server.application_id),
        "name": server.bot_user.name,
        "icon": None,
        "description": "",
        "rpc_origins": [],
        "bot_public": True,
        "bot_require_code_grant": False,
        "bot": server.bot_user.to_json(),
        "owner": {"id": "1", "username": "owner", "discriminator": "0", "avatar": None},
        "summary": "",
        "verify_key": "0" * 64,
        "team": None,
        "flags": server.application_flags,
        "tags": [],
        "redirect_uris": [],
        "interactions_endpoint_url": None,
        "approximate_guild_count": len(server._bot_guilds()),
    })


async def get_gateway(server: DiscordServer, request: web.Request) -> web.Response:
    return json_response({
        "url": server.gateway_url,
        "shards": 1,
        "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0,
                                "max_concurrency": 1},
    })


# -- channels and messages -----------------------------------------------------------------------


async def get_channel(server: DiscordServer, request: web.Request) -> web.Response:
    return json_response(_channel(server, request).to_json())


async def create_message(server: DiscordServer, request: web.Request) -> web.Response:
    channel = _channel(server, request)
    body, files = await read_body(server, request)
    _validate_message(body, files)
    reference = _reference(channel, body)
    message = server.create_message(
        channel, server.bot_user, body, reference=reference,
        attachments=_attachments(server, channel, body, files),
    )
    await server.dispatch_message("MESSAGE_CREATE", message)
    return json_response(message)


async def edit_message(server: DiscordServer, request: web.Request) -> web.Response:
    channel = _channel(server, request)
    message = _message(channel, request)
    if message["author"]["id"] != str(server.bot_user.id):
        raise ApiError(403, 50005, "Cannot edit a message authored by another user")
    body, files = await read_body(server, request)
    _validate_message(body, files, editing=True)
    if files:
        body["attachments"] = [
            a for a in message["attachments"]
            if any(str(b.get("id")) == a["id"] for b in body.get("attachments") or [])
        ] + _attachments(server, channel, body, files)
    message = server.update_message(channel, int(message["id"]), body)
    await server.dispatch_message("MESSAGE_UPDATE", message)
    return json_response(message)


async def delete_message(server: DiscordServer, request: web.Request) -> web.Response:
    channel = _channel(server, request)
    message = _message(channel, request)
    if channel.type == DM and message["author"]["id"] != str(server.bot_user.id):
        raise ApiError(403, 50003, "Cannot execute action on a DM channel")
    await server.delete_message(channel, int(message["id"]))
    return no_content()


async def bulk_delete(server: DiscordServer, request: web.Request) -> web.Response:
    channel = _channel(server, request)
    body, _ = await read_body(server, request)
    ids = [int(i) for i in body.get("messages") or []]
    if not 2 <= len(ids) <= 100:
        raise form_error("messages", "BASE_TYPE_BAD_LENGTH", "Must be between 2 and 100 in length.")
    if any(i not in channel.messages for i in ids):
        raise unknown_message()
    await server.bulk_delete(channel, ids)
    return no_content()


async def get_message(server: DiscordServer, request: web.Request) -> web.Response:
    channel = _channel(server, request)
    return json_response(_visible(server, _message(channel, request)))


async def history(server: DiscordServer, request: web.Request) -> web.Response:
    """Up to `limit` messages (1..100, default 50), newest first, before/after/around an id."""
    channel = _channel(server, request)
    query = request.query
    try:
        limit = int(query.get("limit", 50))
    except ValueError as error:
        raise form_error("limit", "NUMBER_TYPE_COERCE", "Value is not int.") from error
    if not 1 <= limit <= 100:
        raise form_error("limit", "NUMBER_TYPE_MAX", "int value should be between 1 and 100.")
    ids = sorted(channel.messages)
    if "around" in query:
        around = _int(query["around"])
        index = sum(1 for i in ids if i < around)
        start = max(0, index - limit // 2)
        chosen = ids[start:start + limit]
    elif "after" in query:
        after = _int(query["after"])
        chosen = [i for i in ids if i > after][:limit]
    else:
        before = _int(query["before"]) if "before" in query else None
        chosen = [i for i in ids if before is None or i < before][-limit:]
    return json_response([_visible(server, channel.messages[i]) for i in reversed(chosen)])


async def typing(server: DiscordServer, request: web.Request) -> web.Response:
    await server.start_typing(_channel(server, request), server.bot_user)
    return no_content()


# -- threads -------------------------------------------------------------------------------------


async def _open_thread(
    server: DiscordServer, parent: FakeChannel, body: dict[str, Any], *, thread_id: int | None,
    thread_type: int,
) -> web.Response:
    name = body.get("name") or ""
    if not 1 <= len(name) <= 100:
        raise form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
    if parent.guild_id is None or parent.is_thread:
        raise ApiError(400, 50024, "Cannot execute action on this channel type")
    guild = server._guilds[parent.guild_id]
    thread = FakeChannel(
        thread_id or server.snowflakes.next(), name, thread_type, guild_id=guild.id,
        parent_id=parent.id, owner_id=server.bot_user.id, thread_members=[server.bot_user.id],
    )
    server._add_channel(guild, thread)
    data = thread.to_json() | {
        "newly_created": True, "member": thread.thread_member_json(server.bot_user.id),
    }
    await server.dispatch("THREAD_CREATE", data, intent=GUILDS)
    server._changed()
    return json_response(thread.to_json() | {"member": data["member"]}, 201)


async def thread_from_message(server: DiscordServer, request: web.Request) -> web.Response:
    parent = _channel(server, request)
    message = _message(parent, request)
    if "thread" in message:
        raise ApiError(400, 160004, "A thread has already been created for this message")
    body, _ = await read_body(server, request)
    response = await _open_thread(server, parent, body, thread_id=int(message["id"]),
                                  thread_type=PUBLIC_THREAD)
    message["thread"] = server._channels[int(message["id"])].to_json()
    await server.dispatch_message("MESSAGE_UPDATE", message)
    return response


async def thread_without_message(server: DiscordServer, request: web.Request) -> web.Response:
    parent = _channel(server, request)
    body, _ = await read_body(server, request)
    thread_type = int(body.get("type") or PRIVATE_THREAD)
    if thread_type not in (PUBLIC_THREAD, PRIVATE_THREAD):
        raise form_error("type", "BASE_TYPE_CHOICES", "Value must be one of {11, 12}.")
    response = await _open_thread(server, parent, body, thread_id=None, thread_type=thread_type)
    if thread_type == PUBLIC_THREAD:
        # Discord announces a public thread in its parent with a THREAD_CREATED system message.
        thread_id = json.loads(response.body)["id"]  # type: ignore[arg-type]
        notice = server.create_message(
            parent, server.bot_user, {"content": body["name"]},
            extra={"type": THREAD_CREATED, "message_reference": {
                "type": 0, "channel_id": thread_id, "guild_id": str(parent.guild_id)}},
        )
        await server.dispatch_message("MESSAGE_CREATE", notice)
    return response


async def join_thread(server: DiscordServer, request: web.Request) -> web.Response:
    thread = _channel(server, request)
    user_id = request.match_info.get("user_id", "@me")
    user = server.bot_user if user_id == "@me" else server._users.get(_int(user_id))
    if not thread.is_thread:
        raise ApiError(400, 50024, "Cannot execute action on this channel type")
    if user is None:
        raise ApiError(404, 10013, "Unknown User")
    await server.add_thread_members(thread, [user])
    return no_content()


async def leave_thread(server: DiscordServer, request: web.Request) -> web.Response:
    thread = _channel(server, request)
    user_id = request.match_info.get("user_id", "@me")
    member_id = server.bot_user.id if user_id == "@me" else _int(user_id)
    if member_id in thread.thread_members:
        thread.thread_members.remove(member_id)
        await server.dispatch("THREAD_MEMBERS_UPDATE", {
            "id": str(thread.id), "guild_id": str(thread.guild_id),
            "member_count": len(thread.thread_members), "removed_member_ids": [str(member_id)],
        }, intent=GUILDS)
    return no_content()


async def thread_members(server: DiscordServer, request: web.Request) -> web.Response:
    thread = _channel(server, request)
    return json_response([thread.thread_member_json(u) for u in thread.thread_members])


async def open_dm(server: DiscordServer, request: web.Request) -> web.Response:
    body, _ = await read_body(server, request)
    user = server._users.get(_int(str(body.get("recipient_id"))))
    if user is None:
        raise ApiError(404, 10013, "Unknown User")
    if user is server.bot_user:
        raise ApiError(400, 50007, "Cannot send messages to this user")
    return json_response(server.create_dm(user).to_json())


# -- guilds --------------------------------------------------------------------------------------


async def get_guild(server: DiscordServer, request: web.Request) -> web.Response:
    data = _guild(server, request).to_json()
    for key in ("members", "channels", "threads", "voice_states", "presences", "joined_at"):
        data.pop(key)
    return json_response(data)


async def guild_channels(server: DiscordServer, request: web.Request) -> web.Response:
    guild = _guild(server, request)
    return json_response([c.to_json() for c in guild.channels if not c.is_thread])


async def get_member(server: DiscordServer, request: web.Request) -> web.Response:
    member = _guild(server, request).members.get(_int(request.match_info["user_id"]))
    if member is None:
        raise ApiError(404, 10007, "Unknown Member")
    return json_response(member.to_json())


async def list_members(server: DiscordServer, request: web.Request) -> web.Response:
    guild = _guild(server, request)
    limit = int(request.query.get("limit", 1))
    after = int(request.query.get("after", 0))
    members = sorted((m for m in guild.members.values() if m.user.id > after),
                     key=lambda m: m.user.id)
    return json_response([m.to_json() for m in members[:limit]])


async def guild_roles(server: DiscordServer, request: web.Request) -> web.Response:
    return json_response([r.to_json() for r in _guild(server, request).roles.values()])


# -- application commands ------------------------------------------------------------------------


def _scope(server: DiscordServer, request: web.Request) -> int | None:
    if _int(request.match_info["application_id"]) != server.application_id:
        raise ApiError(403, 50001, "Missing Access")
    if "guild_id" not in request.match_info:
        return None
    return _guild(server, request).id


async def get_commands(server: DiscordServer, request: web.Request) -> web.Response:
    return json_response(server._commands.get(_scope(server, request), []))


async def overwrite_commands(server: DiscordServer, request: web.Request) -> web.Response:
    scope = _scope(server, request)
    body, _ = await read_body(server, request)
    if not isinstance(body, list):
        raise form_error("_", "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
    old = {(c["name"], c["type"]): c["id"] for c in server._commands.get(scope, [])}
    commands = []
    for index, command in enumerate(body):
        name = command.get("name", "")
        kind = int(command.get("type", 1))
        if not name or len(name) > 32 or (kind == 1 and name != name.lower()):
            raise form_error(str(index), "APPLICATION_COMMAND_INVALID_NAME",
                             "Command name is invalid")
        commands.append({
            "type": kind, "description": "", "options": [], "default_member_permissions": None,
            "dm_permission": True, "nsfw": False,
        } | command | {
            "id": old.get((name, kind)) or str(server.snowflakes.next()),
            "application_id": str(server.application_id),
            "version": str(server.snowflakes.next()),
        } | ({} if scope is None else {"guild_id": str(scope)}))
    server._commands[scope] = commands
    server._changed()
    return json_response(commands)


def find_command(server: DiscordServer, guild: FakeGuild | None, name: str) -> dict | None:
    """The registered chat-input command `name` for a channel of `guild` (None: a DM)."""
    scopes = ([guild.id] if guild is not None else []) + [None]
    for scope in scopes:
        for command in server._commands.get(scope, []):
            if command["name"] == name and command["type"] == 1:
                return command
    return None


def interaction_payload(
    server: DiscordServer, interaction: FakeInteraction, command: dict[str, Any],
    values: dict[str, Any],
) -> dict[str, Any]:
    """The INTERACTION_CREATE payload of a chat-input command invoked with option `values`."""
    channel, user = interaction.channel, interaction.user
    path = interaction.name.split()
    declared = command.get("options") or []
    # "group sub" names a subcommand: its options nest inside the group's and the sub's.
    nesting: list[dict[str, Any]] = []
    for part in path[1:]:
        found = [o for o in declared if o["name"] == part and int(o["type"]) in (1, 2)]
        if not found:
            raise LookupError(f"/{interaction.name}: no subcommand {part!r}")
        nesting.append({"name": part, "type": int(found[0]["type"]), "options": []})
        declared = found[0].get("options") or []
    by_name = {o["name"]: o for o in declared}
    options, resolved = [], {}
    for name, value in values.items():
        if name not in by_name:
            raise ValueError(f"/{interaction.name} has no option {name!r}")
        kind = int(by_name[name]["type"])
        if kind in (6, 9):  # USER, MENTIONABLE
            target = server.user(value)
            resolved.setdefault("users", {})[str(target.id)] = target.to_json()
            value = str(target.id)
        options.append({"name": name, "type": kind, "value": value})
    for level in reversed(nesting):
        level["options"] = options
        options = [level]
    data: dict[str, Any] = {
        "id": command["id"], "name": command["name"], "type": 1, "options": options,
    }
    if resolved:
        data["resolved"] = resolved
    if "guild_id" in command:
        data["guild_id"] = command["guild_id"]
    payload: dict[str, Any] = {
        "id": str(interaction.id),
        "application_id": str(server.application_id),
        "type": 2,
        "token": interaction.token,
        "version": 1,
        "data": data,
        "channel_id": str(channel.id),
        "channel": channel.to_json(),
        "app_permissions": str(ALL_PERMISSIONS),
        "locale": "en-US",
        "entitlements": [],
        "attachment_size_limit": 10 * 2**20,
    }
    if channel.guild_id is not None:
        member = server._guilds[channel.guild_id].members[user.id]
        payload.update(
            guild_id=str(channel.guild_id),
            guild_locale="en-US",
            guild={"id": str(channel.guild_id), "locale": "en-US", "features": []},
            member=member.to_json() | {"permissions": str(ALL_PERMISSIONS)},
            authorizing_integration_owners={"0": str(channel.guild_id)},
            context=0,
        )
    else:
        payload.update(user=user.to_json(), authorizing_integration_owners={"1": str(user.id)},
                       context=1)
    return payload


# -- interaction responses -----------------------------------------------------------------------


def _interaction(server: DiscordServer, request: web.Request) -> FakeInteraction:
    interaction = server._interactions.get(request.match_info["interaction_token"])
    if interaction is None or (
        "interaction_id" in request.match_info
        and _int(request.match_info["interaction_id"]) != interaction.id
    ):
        raise ApiError(404, 10062, "Unknown interaction")
    if "application_id" in request.match_info and (
        _int(request.match_info["application_id"]) != server.application_id
    ):
        raise ApiError(404, 10015, "Unknown Webhook")
    return interaction


def _response_message(
    server: DiscordServer, interaction: FakeInteraction, body: dict[str, Any], files: list,
    flags: int,
) -> dict[str, Any]:
    """A message the bot makes through an interaction; kept in the channel unless ephemeral."""
    channel = interaction.channel
    metadata = {
        "id": str(interaction.id), "type": 2, "name": interaction.name,
        "user": interaction.user.to_json(), "command_type": 1,
        "authorizing_integration_owners": interaction.payload["authorizing_integration_owners"],
    }
    extra = {
        "type": CHAT_INPUT_COMMAND, "flags": flags, "webhook_id": str(server.application_id),
        "application_id": str(server.application_id), "interaction_metadata": metadata,
        "interaction": {k: metadata[k] for k in ("id", "type", "name", "user")},
    }
    message = server.create_message(channel, server.bot_user, body,
                                    attachments=_attachments(server, channel, body, files),
                                    extra=extra)
    if flags & EPHEMERAL:
        del channel.messages[int(message["id"])]
    return message


def _record(
    interaction: FakeInteraction, kind: str, body: dict[str, Any],
    message: dict[str, Any] | None, callback_type: int | None = None,
) -> None:
    interaction.responses.append({
        "kind": kind,
        "type": callback_type,
        "content": None if message is None else message["content"],
        "ephemeral": bool(message is not None and message["flags"] & EPHEMERAL),
        "message": message,
        "payload": body,
    })
    interaction.server._changed()


async def interaction_callback(server: DiscordServer, request: web.Request) -> web.Response:
    interaction = _interaction(server, request)
    if interaction.acknowledged:
        raise ApiError(400, 40060, "Interaction has already been acknowledged.")
    body, files = await read_body(server, request)
    kind = int(body.get("type", 0))
    data = body.get("data") or {}
    flags = int(data.get("flags") or 0)
    message = None
    if kind == CHANNEL_MESSAGE:
        _validate_message(data, files)
        message = _response_message(server, interaction, data, files, flags & EPHEMERAL)
    elif kind == DEFERRED_CHANNEL_MESSAGE:
        message = _response_message(server, interaction, {}, [], (flags & EPHEMERAL) | LOADING)
        interaction.deferred = True
    elif kind == UPDATE_MESSAGE and interaction.original is not None:
        _validate_message(data, files, editing=True)
        message = _edit_original(server, interaction, data)
    elif kind not in (DEFERRED_UPDATE, UPDATE_MESSAGE, 9):
        raise form_error("type", "BASE_TYPE_CHOICES", "Value must be one of {4, 5, 6, 7, 9}.")
    if kind in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE):
        assert message is not None
        interaction.original = message
        interaction.ephemeral = bool(flags & EPHEMERAL)
        if not interaction.ephemeral:
            await server.dispatch_message("MESSAGE_CREATE", message)
    _record(interaction, "callback", body, message, kind)
    if request.query.get("with_response") not in ("1", "true", "True"):
        return no_content()
    result: dict[str, Any] = {
        "interaction": {
            "id": str(interaction.id), "type": 2,
            "response_message_id": None if message is None else message["id"],
            "response_message_loading": kind == DEFERRED_CHANNEL_MESSAGE,
            "response_message_ephemeral": interaction.ephemeral,
        }
    }
    if message is not None:
        result["resource"] = {"type": kind, "message": message}
    return json_response(result)


def _edit_original(
    server: DiscordServer, interaction: FakeInteraction, body: dict[str, Any]
) -> dict[str, Any]:
    original = interaction.original
    assert original is not None
    if original["flags"] & LOADING:
        body = body | {"flags": original["flags"] & ~LOADING}
    if int(original["id"]) in interaction.channel.messages:
        return server.update_message(interaction.channel, int(original["id"]), body)
    for key in ("content", "embeds", "components", "flags"):
        if body.get(key) is not None:
            original[key] = body[key]
    original["edited_timestamp"] = iso_time()
    server._changed()
    return original


async def followup(server: DiscordServer, request: web.Request) -> web.Response:
    interaction = _interaction(server, request)
    if not interaction.acknowledged:
        raise ApiError(404, 10015, "Unknown Webhook")
    body, files = await read_body(server, request)
    _validate_message(body, files)
    original = interaction.original
    if original is not None and original["flags"] & LOADING:
        # The first followup after a deferral fills in the "thinking..." message.
        message = _edit_original(server, interaction, body)
        event = "MESSAGE_UPDATE"
    else:
        flags = int(body.get("flags") or 0) & EPHEMERAL
        message = _response_message(server, interaction, body, files, flags)
        event = "MESSAGE_CREATE"
    if int(message["id"]) in interaction.channel.messages:
        await server.dispatch_message(event, message)
    _record(interaction, "followup", body, message)
    wait = request.query.get("wait") in ("1", "true", "True")
    return json_response(message) if wait else no_content()


def _webhook_message(interaction: FakeInteraction, request: web.Request) -> dict[str, Any]:
    message_id = request.match_info.get("message_id", "@original")
    if message_id == "@original":
        if interaction.original is None:
            raise unknown_message()
        return interaction.original
    for response in interaction.responses:
        message = response["message"]
        if message is not None and message["id"] == message_id:
            return message
    raise unknown_message()


async def get_webhook_message(server: DiscordServer, request: web.Request) -> web.Response:
    return json_response(_webhook_message(_interaction(server, request), request))


async def edit_webhook_message(server: DiscordServer, request: web.Request) -> web.Response:
    interaction = _interaction(server, request)
    message = _webhook_message(interaction, request)
    body, files = await read_body(server, request)
    _validate_message(body, files, editing=True)
    if message is interaction.original:
        message = _edit_original(server, interaction, body)
    elif int(message["id"]) in interaction.channel.messages:
        message = server.update_message(interaction.channel, int(message["id"]), body)
    if int(message["id"]) in interaction.channel.messages:
        await server.dispatch_message("MESSAGE_UPDATE", message)
    _record(interaction, "edit", body, message)
    return json_response(message)


async def delete_webhook_message(server: DiscordServer, request: web.Request) -> web.Response:
    interaction = _interaction(server, request)
    message = _webhook_message(interaction, request)
    if int(message["id"]) in interaction.channel.messages:
        await server.delete_message(interaction.channel, int(message["id"]))
    _record(interaction, "delete", {}, message)
    return no_content()


# -- attachments (CDN) ---------------------------------------------------------------------------


async def get_attachment(server: DiscordServer, request: web.Request) -> web.Response:
    found = server._files.get(_int(request.match_info["attachment_id"]))
    if found is None:
        raise web.HTTPNotFound()
    content_type, data = found
    return web.Response(body=data, headers={"Content-Type": content_type})


async def unhandled(server: DiscordServer, request: web.Request) -> web.Response:
    """Any route not faked here: recorded, and answered as Discord answers an unknown path."""
    server.unhandled_requests.append((request.method, request.path[len(PREFIX):]))
    server._changed()
    return json_response({"message": "404: Not Found", "code": 0}, 404)


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/users/@me", get_me),
    ("POST", "/users/@me/channels", open_dm),
    ("GET", "/users/{user_id}", get_user),
    ("GET", "/oauth2/applications/@me", get_application),
    ("GET", "/gateway", get_gateway),
    ("GET", "/gateway/bot", get_gateway),
    ("GET", "/channels/{channel_id}", get_channel),
    ("GET", "/channels/{channel_id}/messages", history),
    ("POST", "/channels/{channel_id}/messages", create_message),
    ("POST", "/channels/{channel_id}/messages/bulk-delete", bulk_delete),
    ("GET", "/channels/{channel_id}/messages/{message_id}", get_message),
    ("PATCH", "/channels/{channel_id}/messages/{message_id}", edit_message),
    ("DELETE", "/channels/{channel_id}/messages/{message_id}", delete_message),
    ("POST", "/channels/{channel_id}/messages/{message_id}/threads", thread_from_message),
    ("POST", "/channels/{channel_id}/threads", thread_without_message),
    ("POST", "/channels/{channel_id}/typing", typing),
    ("GET", "/channels/{channel_id}/thread-members", thread_members),
    ("PUT", "/channels/{channel_id}/thread-members/@me", join_thread),
    ("DELETE", "/channels/{channel_id}/thread-members/@me", leave_thread),
    ("PUT", "/channels/{channel_id}/thread-members/{user_id}", join_thread),
    ("DELETE", "/channels/{channel_id}/thread-members/{user_id}", leave_thread),
    ("GET", "/guilds/{guild_id}", get_guild),
    ("GET", "/guilds/{guild_id}/channels", guild_channels),
    ("GET", "/guilds/{guild_id}/members", list_members),
    ("GET", "/guilds/{guild_id}/members/{user_id}", get_member),
    ("GET", "/guilds/{guild_id}/roles", guild_roles),
    ("GET", "/applications/{application_id}/commands", get_commands),
    ("PUT", "/applications/{application_id}/commands", overwrite_commands),
    ("GET", "/applications/{application_id}/guilds/{guild_id}/commands", get_commands),
    ("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", overwrite_commands),
    ("POST", "/interactions/{interaction_id}/{interaction_token}/callback", interaction_callback),
    ("POST", "/webhooks/{application_id}/{interaction_token}", followup),
    ("GET", "/webhooks/{application_id}/{interaction_token}/messages/@original",
     get_webhook_message),
    ("PATCH", "/webhooks/{application_id}/{interaction_token}/messages/@original",
     edit_webhook_message),
    ("DELETE", "/webhooks/{application_id}/{interaction_token}/messages/@original",
     delete_webhook_message),
    ("PATCH", "/webhooks/{application_id}/{interaction_token}/messages/{message_id}",
     edit_webhook_message),
    ("DELETE", "/webhooks/{application_id}/{interaction_token}/messages/{message_id}",
     delete_webhook_message),
]


def add_routes(server: DiscordServer, app: web.Application) -> None:
    def bind(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await handler(server, request)

        return handle

    for method, path, handler in ROUTES:
        app.router.add_route(method, PREFIX + path, bind(handler))
    app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", bind(get_attachment))
    app.router.add_route("*", PREFIX + "/{tail:.*}", bind(unhandled), name="unhandled")
