"""The REST half of the loopback server (API v10): the routes discord.py uses for a chat bot,
with Discord's status codes, error JSON and rate-limit headers."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import interactions, permissions
from .limits import RequestLedger, error_body
from .models import CATEGORY, DM, GUILDS, PRIVATE_THREAD, PUBLIC_THREAD, FakeChannel
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
)
from .routes import Handler, Route
from .state import ServerState

__all__ = ["PREFIX", "ROUTES", "TABLES", "add_routes", "all_routes", "middleware", "route_keys"]

_log = logging.getLogger(__name__)

PREFIX = "/api/v10"
THREAD_CREATED = 18
THREAD_STARTER_MESSAGE = 21


# -- middleware: accounting, rate limits, auth ---------------------------------------------------


def middleware(state: ServerState) -> Any:
    """Discord's treatment of every API request: counted by route template, rate-limited per
    bucket (with 429s a test planned), authenticated, failed as a test planned; then answered
    with the X-RateLimit headers."""

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
        ledger = state.requests
        ledger.record(key)
        bucket = hashlib.sha1(f"{request.method} {route}".encode()).hexdigest()[:16]
        major = next(iter(request.match_info.values()), "")
        token_free = route.startswith(("/interactions/", "/webhooks/"))
        used, reset_after = ledger.consume((request.method, route, major))
        limited = _rate_limited(ledger, key, used - ledger.limit, reset_after, token_free)
        if limited is not None:
            ledger.too_many[key] += 1
            return _too_many_requests(state, bucket, *limited)
        if not token_free and request.headers.get("Authorization") != f"Bot {state.token}":
            return json_response({"message": "401: Unauthorized", "code": 0}, 401)
        response: web.StreamResponse
        fault = ledger.faults.take(key)
        if fault is not None and not fault.after_effect:
            response = json_response(error_body(fault.status), fault.status)
        else:
            try:
                response = await handler(request)
            except ApiError as error:
                response = error.response()
            if fault is not None:
                # Carried out, then lost on the way back (a gateway timeout after the effect).
                _log.debug("%s %s carried out, answered %s", *key, fault.status)
                response = json_response(error_body(fault.status), fault.status)
        remaining = ledger.limit - used
        response.headers.update(_ratelimit_headers(state, bucket, remaining, reset_after))
        state.changed()  # request counts are state a test may wait on
        return response

    return discord_middleware


def _rate_limited(
    ledger: RequestLedger, key: tuple[str, str], over: int, reset_after: float, token_free: bool
) -> tuple[float, str] | None:
    """Whether a request (`over` its bucket's limit by that many, the bucket resetting in
    `reset_after` s) is answered 429: ``(retry_after, scope)``, else None. A planned 429 or a
    full bucket comes first; then it counts in the bot-wide limit, which interaction responses
    and webhooks are outside of, as on Discord."""
    retry_after = ledger.take_rate_limit(key)
    if retry_after is None and over > 0:
        retry_after = reset_after
    if retry_after is not None:
        return retry_after, "user"
    wait = None if token_free else ledger.consume_global()
    return None if wait is None else (wait, "global")


def _too_many_requests(
    state: ServerState, bucket: str, retry_after: float, scope: str = "user"
) -> web.Response:
    """Discord's 429: JSON body, rate-limit headers, and the ``Via`` header of Discord's proxy
    (without it discord.py takes a 429 for a Cloudflare ban and gives up). `scope` ``"global"``
    is the bot-wide limit's 429."""
    headers = _ratelimit_headers(state, bucket, 0, retry_after) | {
        "Via": "1.1 google",
        "Retry-After": str(max(1, round(retry_after))),
        "X-RateLimit-Scope": scope,
    }
    if scope == "global":
        headers["X-RateLimit-Global"] = "true"
    body = {
        "message": "You are being rate limited.",
        "retry_after": round(retry_after, 3),
        "global": scope == "global",
    }
    state.changed()
    return json_response(body, 429, headers)


def _ratelimit_headers(
    state: ServerState, bucket: str, remaining: int, reset_after: float
) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(state.requests.limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
        # Rounded up, so a client never comes back before the window has really reset.
        "X-RateLimit-Reset-After": f"{math.ceil(reset_after * 1000) / 1000:.3f}",
        "X-RateLimit-Bucket": bucket,
    }


# -- users, application, gateway -----------------------------------------------------------------


async def get_me(state: ServerState, request: web.Request) -> web.Response:
    return json_response(state.bot_user.to_json() | {"verified": True, "mfa_enabled": False})


async def get_user(state: ServerState, request: web.Request) -> web.Response:
    user = state.users.get(snowflake(request.match_info["user_id"]))
    if user is None:
        raise ApiError(404, 10013, "Unknown User")
    return json_response(user.to_json())


async def get_application(state: ServerState, request: web.Request) -> web.Response:
    return json_response(
        {
            "id": str(state.application_id),
            "name": state.bot_user.name,
            "icon": None,
            "description": "",
            "rpc_origins": [],
            "bot_public": True,
            "bot_require_code_grant": False,
            "bot": state.bot_user.to_json(),
            "owner": {"id": "1", "username": "owner", "discriminator": "0", "avatar": None},
            "summary": "",
            "verify_key": "0" * 64,
            "team": None,
            "flags": state.application_flags,
            "tags": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "approximate_guild_count": len(state.bot_guilds()),
        }
    )


async def get_gateway(state: ServerState, request: web.Request) -> web.Response:
    return json_response({"url": state.gateway_url})


async def get_bot_gateway(state: ServerState, request: web.Request) -> web.Response:
    """The recommended shard count and the session start limit, as of now."""
    return json_response(
        {
            "url": state.gateway_url,
            "shards": state.shard_count,
            "session_start_limit": state.session_start_limit.to_json(),
        }
    )


# -- channels and messages -----------------------------------------------------------------------


async def get_channel(state: ServerState, request: web.Request) -> web.Response:
    return json_response(channel_of(state, request).to_json())


async def create_message(state: ServerState, request: web.Request) -> web.Response:
    channel = channel_of(state, request)
    if channel.type == CATEGORY:  # a category holds no messages
        raise ApiError(400, 50008, "Cannot send messages in a non-text channel")
    body, files = await read_body(request)
    permissions.require(state, channel, permissions.to_send(channel, bool(files)))
    validate_message(body, files)
    earlier = nonce_duplicate(channel, state.bot_user.id, body)
    if earlier is not None:
        return json_response(state.visible(earlier))
    reference = reply_reference(channel, body)
    message = state.create_message(
        channel,
        state.bot_user,
        body,
        reference=reference,
        attachments=make_attachments(state, channel, body, files),
    )
    await state.dispatch_message("MESSAGE_CREATE", message)
    return json_response(message)


async def edit_message(state: ServerState, request: web.Request) -> web.Response:
    channel = channel_of(state, request)
    message = message_of(channel, request)
    if message["author"]["id"] != str(state.bot_user.id):
        raise ApiError(403, 50005, "Cannot edit a message authored by another user")
    body, files = await read_body(request)
    validate_message(body, files, editing=True)
    if files:
        body["attachments"] = [
            a
            for a in message["attachments"]
            if any(str(b.get("id")) == a["id"] for b in body.get("attachments") or [])
        ] + make_attachments(state, channel, body, files)
    message = state.update_message(channel, int(message["id"]), body)
    await state.dispatch_message("MESSAGE_UPDATE", message)
    return json_response(message)


async def delete_message(state: ServerState, request: web.Request) -> web.Response:
    channel = channel_of(state, request)
    message = message_of(channel, request)
    if channel.type == DM and message["author"]["id"] != str(state.bot_user.id):
        raise ApiError(403, 50003, "Cannot execute action on a DM channel")
    await state.delete_messages(channel, [int(message["id"])])
    return no_content()


async def bulk_delete(state: ServerState, request: web.Request) -> web.Response:
    channel = channel_of(state, request)
    body, _ = await read_body(request)
    ids = [int(i) for i in body.get("messages") or []]
    if not 2 <= len(ids) <= 100:
        raise form_error("messages", "BASE_TYPE_BAD_LENGTH", "Must be between 2 and 100 in length.")
    if any(i not in channel.messages for i in ids):
        raise unknown_message()
    await state.delete_messages(channel, ids)
    return no_content()


async def get_message(state: ServerState, request: web.Request) -> web.Response:
    channel = channel_of(state, request)
    return json_response(state.visible(message_of(channel, request)))


async def history(state: ServerState, request: web.Request) -> web.Response:
    """Up to `limit` messages (1..100, default 50), newest first, before/after/around an id."""
    channel = channel_of(state, request)
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
    if not permissions.can_read_history(state, channel):
        chosen = []
    return json_response([state.visible(channel.messages[i]) for i in reversed(chosen)])


async def typing(state: ServerState, request: web.Request) -> web.Response:
    channel = channel_of(state, request)
    permissions.require(state, channel, permissions.to_send(channel, False))
    await state.start_typing(channel, state.bot_user)
    return no_content()


# -- threads -------------------------------------------------------------------------------------


async def _open_thread(
    state: ServerState,
    parent: FakeChannel,
    body: dict[str, Any],
    *,
    thread_id: int | None,
    thread_type: int,
) -> FakeChannel:
    """Make a thread of the bot's in `parent` and dispatch THREAD_CREATE.

    Raises
    ------
    ApiError
        A bad name, or a parent that cannot hold threads.
    """
    name = body.get("name") or ""
    if not 1 <= len(name) <= 100:
        raise form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
    if parent.guild_id is None or parent.is_thread:
        raise ApiError(400, 50024, "Cannot execute action on this channel type")
    needed = {PUBLIC_THREAD: permissions.CREATE_PUBLIC_THREADS}
    permissions.require(state, parent, needed.get(thread_type, permissions.CREATE_PRIVATE_THREADS))
    guild = state.guilds[parent.guild_id]
    thread = FakeChannel(
        thread_id or state.snowflakes.next(),
        name,
        thread_type,
        guild_id=guild.id,
        parent_id=parent.id,
        owner_id=state.bot_user.id,
        thread_members=[state.bot_user.id],
    )
    state.add_channel(guild, thread)
    data = thread.to_json() | {"newly_created": True, "member": _bot_thread_member(state, thread)}
    await state.dispatch("THREAD_CREATE", data, intent=GUILDS)
    return thread


def _bot_thread_member(state: ServerState, thread: FakeChannel) -> dict[str, Any]:
    return thread.thread_member_json(state.bot_user.id)


def _thread_response(state: ServerState, thread: FakeChannel) -> web.Response:
    return json_response(thread.to_json() | {"member": _bot_thread_member(state, thread)}, 201)


async def thread_from_message(state: ServerState, request: web.Request) -> web.Response:
    parent = channel_of(state, request)
    message = message_of(parent, request)
    if "thread" in message:
        raise ApiError(400, 160004, "A thread has already been created for this message")
    body, _ = await read_body(request)
    thread = await _open_thread(
        state, parent, body, thread_id=int(message["id"]), thread_type=PUBLIC_THREAD
    )
    message["thread"] = thread.to_json()
    await state.dispatch_message("MESSAGE_UPDATE", message)
    # Discord's first message in a thread started from a message: a THREAD_STARTER_MESSAGE
    # whose reference is the starter message in the parent channel.
    starter = state.create_message(
        thread,
        state.bot_user,
        {"content": ""},
        extra={
            "type": THREAD_STARTER_MESSAGE,
            "message_reference": {
                "type": 0,
                "message_id": message["id"],
                "channel_id": str(parent.id),
                "guild_id": str(parent.guild_id),
            },
            "referenced_message": {k: v for k, v in message.items() if k != "referenced_message"},
        },
    )
    await state.dispatch_message("MESSAGE_CREATE", starter)
    return _thread_response(state, thread)


async def thread_without_message(state: ServerState, request: web.Request) -> web.Response:
    parent = channel_of(state, request)
    body, _ = await read_body(request)
    thread_type = int(body.get("type") or PRIVATE_THREAD)
    if thread_type not in (PUBLIC_THREAD, PRIVATE_THREAD):
        raise form_error("type", "BASE_TYPE_CHOICES", "Value must be one of {11, 12}.")
    thread = await _open_thread(state, parent, body, thread_id=None, thread_type=thread_type)
    if thread_type == PUBLIC_THREAD:
        # Discord announces a public thread in its parent with a THREAD_CREATED system message.
        notice = state.create_message(
            parent,
            state.bot_user,
            {"content": body["name"]},
            extra={
                "type": THREAD_CREATED,
                "message_reference": {
                    "type": 0,
                    "channel_id": str(thread.id),
                    "guild_id": str(parent.guild_id),
                },
            },
        )
        await state.dispatch_message("MESSAGE_CREATE", notice)
    return _thread_response(state, thread)


async def join_thread(state: ServerState, request: web.Request) -> web.Response:
    thread = channel_of(state, request)
    user_id = request.match_info.get("user_id", "@me")
    user = state.bot_user if user_id == "@me" else state.users.get(snowflake(user_id))
    if not thread.is_thread:
        raise ApiError(400, 50024, "Cannot execute action on this channel type")
    if user is None:
        raise ApiError(404, 10013, "Unknown User")
    await state.add_thread_members(thread, [user.id])
    return no_content()


async def leave_thread(state: ServerState, request: web.Request) -> web.Response:
    thread = channel_of(state, request)
    user_id = request.match_info.get("user_id", "@me")
    member_id = state.bot_user.id if user_id == "@me" else snowflake(user_id)
    await state.remove_thread_member(thread, member_id)
    return no_content()


async def thread_members(state: ServerState, request: web.Request) -> web.Response:
    thread = channel_of(state, request)
    return json_response([thread.thread_member_json(u) for u in thread.thread_members])


async def open_dm(state: ServerState, request: web.Request) -> web.Response:
    body, _ = await read_body(request)
    user = state.users.get(snowflake(str(body.get("recipient_id"))))
    if user is None:
        raise ApiError(404, 10013, "Unknown User")
    if user is state.bot_user:
        raise ApiError(400, 50007, "Cannot send messages to this user")
    return json_response(state.dm_channel(user).to_json())


# -- guilds --------------------------------------------------------------------------------------


async def get_guild(state: ServerState, request: web.Request) -> web.Response:
    data = guild_of(state, request).to_json()
    for key in ("members", "channels", "threads", "voice_states", "presences", "joined_at"):
        data.pop(key)
    return json_response(data)


async def guild_channels(state: ServerState, request: web.Request) -> web.Response:
    guild = guild_of(state, request)
    return json_response([c.to_json() for c in guild.channels if not c.is_thread])


async def get_member(state: ServerState, request: web.Request) -> web.Response:
    member = guild_of(state, request).members.get(snowflake(request.match_info["user_id"]))
    if member is None:
        raise ApiError(404, 10007, "Unknown Member")
    return json_response(member.to_json())


async def list_members(state: ServerState, request: web.Request) -> web.Response:
    guild = guild_of(state, request)
    limit = int(request.query.get("limit", 1))
    after = int(request.query.get("after", 0))
    members = sorted(
        (m for m in guild.members.values() if m.user.id > after), key=lambda m: m.user.id
    )
    return json_response([m.to_json() for m in members[:limit]])


async def guild_roles(state: ServerState, request: web.Request) -> web.Response:
    return json_response([r.to_json() for r in guild_of(state, request).roles.values()])


# -- attachments (CDN) ---------------------------------------------------------------------------


async def get_attachment(state: ServerState, request: web.Request) -> web.Response:
    found = state.files.get(snowflake(request.match_info["attachment_id"]))
    if found is None:
        raise web.HTTPNotFound()
    content_type, data = found
    return web.Response(body=data, headers={"Content-Type": content_type})


async def unhandled(state: ServerState, request: web.Request) -> web.Response:
    """Any route not faked here: recorded, and answered as Discord answers an unknown path."""
    state.unhandled_requests.append((request.method, request.path[len(PREFIX) :]))
    _log.info("no fake for %s %s: answered 404", request.method, request.path)
    state.changed()
    return json_response({"message": "404: Not Found", "code": 0}, 404)


ROUTES: list[Route] = [
    Route("GET", "/users/@me", get_me),
    Route("POST", "/users/@me/channels", open_dm),
    Route("GET", "/users/{user_id}", get_user),
    Route("GET", "/oauth2/applications/@me", get_application),
    Route("GET", "/gateway", get_gateway),
    Route("GET", "/gateway/bot", get_bot_gateway),
    Route("GET", "/channels/{channel_id}", get_channel),
    Route("GET", "/channels/{channel_id}/messages", history),
    Route("POST", "/channels/{channel_id}/messages", create_message),
    Route("POST", "/channels/{channel_id}/messages/bulk-delete", bulk_delete),
    Route("GET", "/channels/{channel_id}/messages/{message_id}", get_message),
    Route("PATCH", "/channels/{channel_id}/messages/{message_id}", edit_message),
    Route("DELETE", "/channels/{channel_id}/messages/{message_id}", delete_message),
    Route("POST", "/channels/{channel_id}/messages/{message_id}/threads", thread_from_message),
    Route("POST", "/channels/{channel_id}/threads", thread_without_message),
    Route("POST", "/channels/{channel_id}/typing", typing),
    Route("GET", "/channels/{channel_id}/thread-members", thread_members),
    Route("PUT", "/channels/{channel_id}/thread-members/@me", join_thread),
    Route("DELETE", "/channels/{channel_id}/thread-members/@me", leave_thread),
    Route("PUT", "/channels/{channel_id}/thread-members/{user_id}", join_thread),
    Route("DELETE", "/channels/{channel_id}/thread-members/{user_id}", leave_thread),
    Route("GET", "/guilds/{guild_id}", get_guild),
    Route("GET", "/guilds/{guild_id}/channels", guild_channels),
    Route("GET", "/guilds/{guild_id}/members", list_members),
    Route("GET", "/guilds/{guild_id}/members/{user_id}", get_member),
    Route("GET", "/guilds/{guild_id}/roles", guild_roles),
]

# Every feature's route table; a new feature (components, permissions...) adds its own here.
TABLES: tuple[list[Route], ...] = (ROUTES, interactions.ROUTES, permissions.ROUTES)


def all_routes() -> list[Route]:
    return [route for table in TABLES for route in table]


def route_keys() -> set[tuple[str, str]]:
    """(method, route template) of every REST route served."""
    return {(route.method, route.path) for route in all_routes()}


def add_routes(state: ServerState, app: web.Application) -> None:
    """Mount every route table on `app` (under ``/api/v10``), the attachment CDN, and a
    catch-all that records and 404s the routes not faked."""

    def bind(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await handler(state, request)

        return handle

    for method, path, handler in all_routes():
        app.router.add_route(method, PREFIX + path, bind(handler))
    app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", bind(get_attachment))
    app.router.add_route("*", PREFIX + "/{tail:.*}", bind(unhandled), name="unhandled")
