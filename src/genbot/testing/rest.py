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

from . import interactions
from .faults import error_body
from .payloads import (
    ApiError,
    channel_of,
    form_error,
    guild_of,
    json_response,
    make_attachments,
    message_of,
    no_content,
    nonce_duplicate,
    read_body,
    reply_reference,
    snowflake,
    unknown_message,
    validate_message,
    visible,
)
from .state import DM, PRIVATE_THREAD, PUBLIC_THREAD, FakeChannel

if TYPE_CHECKING:
    from .server import DiscordServer

__all__ = ["ROUTES", "add_routes", "middleware"]

PREFIX = "/api/v10"
THREAD_CREATED = 18
GUILDS = 1 << 0

Handler = Callable[["DiscordServer", web.Request], Awaitable[web.StreamResponse]]


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
        route = resource.canonical[len(PREFIX) :]
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
        fault = server._faults.take(key)
        if fault is not None and not fault.after_effect:
            response = json_response(error_body(fault.status), fault.status)
        else:
            try:
                response = await handler(request)
            except ApiError as error:
                response = error.response()
            if fault is not None:
                # Carried out, then lost on the way back (a gateway timeout after the effect).
                response = json_response(error_body(fault.status), fault.status)
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
        "Via": "1.1 google",
        "Retry-After": str(max(1, round(retry_after))),
        "X-RateLimit-Scope": "user",
    }
    body = {
        "message": "You are being rate limited.",
        "retry_after": round(retry_after, 3),
        "global": False,
    }
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


# -- users, application, gateway -----------------------------------------------------------------


async def get_me(server: DiscordServer, request: web.Request) -> web.Response:
    return json_response(server.bot_user.to_json() | {"verified": True, "mfa_enabled": False})


async def get_user(server: DiscordServer, request: web.Request) -> web.Response:
    user = server._users.get(snowflake(request.match_info["user_id"]))
    if user is None:
        raise ApiError(404, 10013, "Unknown User")
    return json_response(user.to_json())


async def get_application(server: DiscordServer, request: web.Request) -> web.Response:
    return json_response(
        {
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
        }
    )


async def get_gateway(server: DiscordServer, request: web.Request) -> web.Response:
    return json_response(
        {
            "url": server.gateway_url,
            "shards": 1,
            "session_start_limit": {
                "total": 1000,
                "remaining": 999,
                "reset_after": 0,
                "max_concurrency": 1,
            },
        }
    )


# -- channels and messages -----------------------------------------------------------------------


async def get_channel(server: DiscordServer, request: web.Request) -> web.Response:
    return json_response(channel_of(server, request).to_json())


async def create_message(server: DiscordServer, request: web.Request) -> web.Response:
    channel = channel_of(server, request)
    body, files = await read_body(server, request)
    validate_message(body, files)
    earlier = nonce_duplicate(channel, server.bot_user.id, body)
    if earlier is not None:
        return json_response(visible(server, earlier))
    reference = reply_reference(channel, body)
    message = server.create_message(
        channel,
        server.bot_user,
        body,
        reference=reference,
        attachments=make_attachments(server, channel, body, files),
    )
    await server.dispatch_message("MESSAGE_CREATE", message)
    return json_response(message)


async def edit_message(server: DiscordServer, request: web.Request) -> web.Response:
    channel = channel_of(server, request)
    message = message_of(channel, request)
    if message["author"]["id"] != str(server.bot_user.id):
        raise ApiError(403, 50005, "Cannot edit a message authored by another user")
    body, files = await read_body(server, request)
    validate_message(body, files, editing=True)
    if files:
        body["attachments"] = [
            a
            for a in message["attachments"]
            if any(str(b.get("id")) == a["id"] for b in body.get("attachments") or [])
        ] + make_attachments(server, channel, body, files)
    message = server.update_message(channel, int(message["id"]), body)
    await server.dispatch_message("MESSAGE_UPDATE", message)
    return json_response(message)


async def delete_message(server: DiscordServer, request: web.Request) -> web.Response:
    channel = channel_of(server, request)
    message = message_of(channel, request)
    if channel.type == DM and message["author"]["id"] != str(server.bot_user.id):
        raise ApiError(403, 50003, "Cannot execute action on a DM channel")
    await server.delete_message(channel, int(message["id"]))
    return no_content()


async def bulk_delete(server: DiscordServer, request: web.Request) -> web.Response:
    channel = channel_of(server, request)
    body, _ = await read_body(server, request)
    ids = [int(i) for i in body.get("messages") or []]
    if not 2 <= len(ids) <= 100:
        raise form_error("messages", "BASE_TYPE_BAD_LENGTH", "Must be between 2 and 100 in length.")
    if any(i not in channel.messages for i in ids):
        raise unknown_message()
    await server.bulk_delete(channel, ids)
    return no_content()


async def get_message(server: DiscordServer, request: web.Request) -> web.Response:
    channel = channel_of(server, request)
    return json_response(visible(server, message_of(channel, request)))


async def history(server: DiscordServer, request: web.Request) -> web.Response:
    """Up to `limit` messages (1..100, default 50), newest first, before/after/around an id."""
    channel = channel_of(server, request)
    query = request.query
    try:
        limit = int(query.get("limit", 50))
    except ValueError as error:
        raise form_error("limit", "NUMBER_TYPE_COERCE", "Value is not int.") from error
    if not 1 <= limit <= 100:
        raise form_error("limit", "NUMBER_TYPE_MAX", "int value should be between 1 and 100.")
    ids = sorted(channel.messages)
    if "around" in query:
        around = snowflake(query["around"])
        index = sum(1 for i in ids if i < around)
        start = max(0, index - limit // 2)
        chosen = ids[start : start + limit]
    elif "after" in query:
        after = snowflake(query["after"])
        chosen = [i for i in ids if i > after][:limit]
    else:
        before = snowflake(query["before"]) if "before" in query else None
        chosen = [i for i in ids if before is None or i < before][-limit:]
    return json_response([visible(server, channel.messages[i]) for i in reversed(chosen)])


async def typing(server: DiscordServer, request: web.Request) -> web.Response:
    await server.start_typing(channel_of(server, request), server.bot_user)
    return no_content()


# -- threads -------------------------------------------------------------------------------------


async def _open_thread(
    server: DiscordServer,
    parent: FakeChannel,
    body: dict[str, Any],
    *,
    thread_id: int | None,
    thread_type: int,
) -> web.Response:
    name = body.get("name") or ""
    if not 1 <= len(name) <= 100:
        raise form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
    if parent.guild_id is None or parent.is_thread:
        raise ApiError(400, 50024, "Cannot execute action on this channel type")
    guild = server._guilds[parent.guild_id]
    thread = FakeChannel(
        thread_id or server.snowflakes.next(),
        name,
        thread_type,
        guild_id=guild.id,
        parent_id=parent.id,
        owner_id=server.bot_user.id,
        thread_members=[server.bot_user.id],
    )
    server._add_channel(guild, thread)
    data = thread.to_json() | {
        "newly_created": True,
        "member": thread.thread_member_json(server.bot_user.id),
    }
    await server.dispatch("THREAD_CREATE", data, intent=GUILDS)
    server._changed()
    return json_response(thread.to_json() | {"member": data["member"]}, 201)


async def thread_from_message(server: DiscordServer, request: web.Request) -> web.Response:
    parent = channel_of(server, request)
    message = message_of(parent, request)
    if "thread" in message:
        raise ApiError(400, 160004, "A thread has already been created for this message")
    body, _ = await read_body(server, request)
    response = await _open_thread(
        server, parent, body, thread_id=int(message["id"]), thread_type=PUBLIC_THREAD
    )
    message["thread"] = server._channels[int(message["id"])].to_json()
    await server.dispatch_message("MESSAGE_UPDATE", message)
    return response


async def thread_without_message(server: DiscordServer, request: web.Request) -> web.Response:
    parent = channel_of(server, request)
    body, _ = await read_body(server, request)
    thread_type = int(body.get("type") or PRIVATE_THREAD)
    if thread_type not in (PUBLIC_THREAD, PRIVATE_THREAD):
        raise form_error("type", "BASE_TYPE_CHOICES", "Value must be one of {11, 12}.")
    response = await _open_thread(server, parent, body, thread_id=None, thread_type=thread_type)
    if thread_type == PUBLIC_THREAD:
        # Discord announces a public thread in its parent with a THREAD_CREATED system message.
        thread_id = json.loads(response.body)["id"]  # type: ignore[arg-type]
        notice = server.create_message(
            parent,
            server.bot_user,
            {"content": body["name"]},
            extra={
                "type": THREAD_CREATED,
                "message_reference": {
                    "type": 0,
                    "channel_id": thread_id,
                    "guild_id": str(parent.guild_id),
                },
            },
        )
        await server.dispatch_message("MESSAGE_CREATE", notice)
    return response


async def join_thread(server: DiscordServer, request: web.Request) -> web.Response:
    thread = channel_of(server, request)
    user_id = request.match_info.get("user_id", "@me")
    user = server.bot_user if user_id == "@me" else server._users.get(snowflake(user_id))
    if not thread.is_thread:
        raise ApiError(400, 50024, "Cannot execute action on this channel type")
    if user is None:
        raise ApiError(404, 10013, "Unknown User")
    await server.add_thread_members(thread, [user])
    return no_content()


async def leave_thread(server: DiscordServer, request: web.Request) -> web.Response:
    thread = channel_of(server, request)
    user_id = request.match_info.get("user_id", "@me")
    member_id = server.bot_user.id if user_id == "@me" else snowflake(user_id)
    if member_id in thread.thread_members:
        thread.thread_members.remove(member_id)
        await server.dispatch(
            "THREAD_MEMBERS_UPDATE",
            {
                "id": str(thread.id),
                "guild_id": str(thread.guild_id),
                "member_count": len(thread.thread_members),
                "removed_member_ids": [str(member_id)],
            },
            intent=GUILDS,
        )
    return no_content()


async def thread_members(server: DiscordServer, request: web.Request) -> web.Response:
    thread = channel_of(server, request)
    return json_response([thread.thread_member_json(u) for u in thread.thread_members])


async def open_dm(server: DiscordServer, request: web.Request) -> web.Response:
    body, _ = await read_body(server, request)
    user = server._users.get(snowflake(str(body.get("recipient_id"))))
    if user is None:
        raise ApiError(404, 10013, "Unknown User")
    if user is server.bot_user:
        raise ApiError(400, 50007, "Cannot send messages to this user")
    return json_response(server.create_dm(user).to_json())


# -- guilds --------------------------------------------------------------------------------------


async def get_guild(server: DiscordServer, request: web.Request) -> web.Response:
    data = guild_of(server, request).to_json()
    for key in ("members", "channels", "threads", "voice_states", "presences", "joined_at"):
        data.pop(key)
    return json_response(data)


async def guild_channels(server: DiscordServer, request: web.Request) -> web.Response:
    guild = guild_of(server, request)
    return json_response([c.to_json() for c in guild.channels if not c.is_thread])


async def get_member(server: DiscordServer, request: web.Request) -> web.Response:
    member = guild_of(server, request).members.get(snowflake(request.match_info["user_id"]))
    if member is None:
        raise ApiError(404, 10007, "Unknown Member")
    return json_response(member.to_json())


async def list_members(server: DiscordServer, request: web.Request) -> web.Response:
    guild = guild_of(server, request)
    limit = int(request.query.get("limit", 1))
    after = int(request.query.get("after", 0))
    members = sorted(
        (m for m in guild.members.values() if m.user.id > after), key=lambda m: m.user.id
    )
    return json_response([m.to_json() for m in members[:limit]])


async def guild_roles(server: DiscordServer, request: web.Request) -> web.Response:
    return json_response([r.to_json() for r in guild_of(server, request).roles.values()])


# -- attachments (CDN) ---------------------------------------------------------------------------


async def get_attachment(server: DiscordServer, request: web.Request) -> web.Response:
    found = server._files.get(snowflake(request.match_info["attachment_id"]))
    if found is None:
        raise web.HTTPNotFound()
    content_type, data = found
    return web.Response(body=data, headers={"Content-Type": content_type})


async def unhandled(server: DiscordServer, request: web.Request) -> web.Response:
    """Any route not faked here: recorded, and answered as Discord answers an unknown path."""
    server.unhandled_requests.append((request.method, request.path[len(PREFIX) :]))
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
    ("GET", "/applications/{application_id}/commands", interactions.get_commands),
    ("PUT", "/applications/{application_id}/commands", interactions.overwrite_commands),
    ("GET", "/applications/{application_id}/guilds/{guild_id}/commands", interactions.get_commands),
    (
        "PUT",
        "/applications/{application_id}/guilds/{guild_id}/commands",
        interactions.overwrite_commands,
    ),
    (
        "POST",
        "/interactions/{interaction_id}/{interaction_token}/callback",
        interactions.interaction_callback,
    ),
    ("POST", "/webhooks/{application_id}/{interaction_token}", interactions.followup),
    (
        "GET",
        "/webhooks/{application_id}/{interaction_token}/messages/@original",
        interactions.get_webhook_message,
    ),
    (
        "PATCH",
        "/webhooks/{application_id}/{interaction_token}/messages/@original",
        interactions.edit_webhook_message,
    ),
    (
        "DELETE",
        "/webhooks/{application_id}/{interaction_token}/messages/@original",
        interactions.delete_webhook_message,
    ),
    (
        "PATCH",
        "/webhooks/{application_id}/{interaction_token}/messages/{message_id}",
        interactions.edit_webhook_message,
    ),
    (
        "DELETE",
        "/webhooks/{application_id}/{interaction_token}/messages/{message_id}",
        interactions.delete_webhook_message,
    ),
]


def route_keys() -> set[tuple[str, str]]:
    """(method, route template) of every REST route served (templates as in `ROUTES`)."""
    return {(method, path) for method, path, _ in ROUTES}


def add_routes(server: DiscordServer, app: web.Application) -> None:
    def bind(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await handler(server, request)

        return handle

    for method, path, handler in ROUTES:
        app.router.add_route(method, PREFIX + path, bind(handler))
    app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", bind(get_attachment))
    app.router.add_route("*", PREFIX + "/{tail:.*}", bind(unhandled), name="unhandled")
