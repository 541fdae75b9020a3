"""Application commands and interactions: command sync, the INTERACTION_CREATE payload of an
invoked slash command, and the bot's answers (callbacks, followups, the original response)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from .payloads import (
    ApiError,
    form_error,
    guild_of,
    json_response,
    make_attachments,
    no_content,
    read_body,
    snowflake,
    unknown_message,
    validate_message,
)
from .state import FakeGuild, iso_time

if TYPE_CHECKING:
    from .server import DiscordServer, FakeInteraction

__all__ = [
    "delete_webhook_message",
    "edit_webhook_message",
    "find_command",
    "followup",
    "get_commands",
    "get_webhook_message",
    "interaction_callback",
    "interaction_payload",
    "overwrite_commands",
]

EPHEMERAL, LOADING = 1 << 6, 1 << 7
CHAT_INPUT_COMMAND = 20
# Interaction callback types.
CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE, MODAL = 4, 5, 6, 7, 9
ALL_PERMISSIONS = (1 << 53) - 1


def _scope(server: DiscordServer, request: web.Request) -> int | None:
    if snowflake(request.match_info["application_id"]) != server.application_id:
        raise ApiError(403, 50001, "Missing Access")
    if "guild_id" not in request.match_info:
        return None
    return guild_of(server, request).id


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
            raise form_error(
                str(index), "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
            )
        commands.append(
            {
                "type": kind,
                "description": "",
                "options": [],
                "default_member_permissions": None,
                "dm_permission": True,
                "nsfw": False,
            }
            | command
            | {
                "id": old.get((name, kind)) or str(server.snowflakes.next()),
                "application_id": str(server.application_id),
                "version": str(server.snowflakes.next()),
            }
            | ({} if scope is None else {"guild_id": str(scope)})
        )
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
    server: DiscordServer,
    interaction: FakeInteraction,
    command: dict[str, Any],
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
        "id": command["id"],
        "name": command["name"],
        "type": 1,
        "options": options,
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
        payload.update(
            user=user.to_json(), authorizing_integration_owners={"1": str(user.id)}, context=1
        )
    return payload


# -- interaction responses -----------------------------------------------------------------------


def _interaction(server: DiscordServer, request: web.Request) -> FakeInteraction:
    interaction = server._interactions.get(request.match_info["interaction_token"])
    if interaction is None or (
        "interaction_id" in request.match_info
        and snowflake(request.match_info["interaction_id"]) != interaction.id
    ):
        raise ApiError(404, 10062, "Unknown interaction")
    if "application_id" in request.match_info and (
        snowflake(request.match_info["application_id"]) != server.application_id
    ):
        raise ApiError(404, 10015, "Unknown Webhook")
    return interaction


def _response_message(
    server: DiscordServer,
    interaction: FakeInteraction,
    body: dict[str, Any],
    files: list,
    flags: int,
) -> dict[str, Any]:
    """A message the bot makes through an interaction; kept in the channel unless ephemeral."""
    channel = interaction.channel
    metadata = {
        "id": str(interaction.id),
        "type": 2,
        "name": interaction.name,
        "user": interaction.user.to_json(),
        "command_type": 1,
        "authorizing_integration_owners": interaction.payload["authorizing_integration_owners"],
    }
    extra = {
        "type": CHAT_INPUT_COMMAND,
        "flags": flags,
        "webhook_id": str(server.application_id),
        "application_id": str(server.application_id),
        "interaction_metadata": metadata,
        "interaction": {k: metadata[k] for k in ("id", "type", "name", "user")},
    }
    message = server.create_message(
        channel,
        server.bot_user,
        body,
        attachments=make_attachments(server, channel, body, files),
        extra=extra,
    )
    if flags & EPHEMERAL:
        del channel.messages[int(message["id"])]
    return message


def _record(
    interaction: FakeInteraction,
    kind: str,
    body: dict[str, Any],
    message: dict[str, Any] | None,
    callback_type: int | None = None,
) -> None:
    interaction.responses.append(
        {
            "kind": kind,
            "type": callback_type,
            "content": None if message is None else message["content"],
            "ephemeral": bool(message is not None and message["flags"] & EPHEMERAL),
            "message": message,
            "payload": body,
        }
    )
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
        validate_message(data, files)
        message = _response_message(server, interaction, data, files, flags & EPHEMERAL)
    elif kind == DEFERRED_CHANNEL_MESSAGE:
        message = _response_message(server, interaction, {}, [], (flags & EPHEMERAL) | LOADING)
        interaction.deferred = True
    elif kind == UPDATE_MESSAGE and interaction.original is not None:
        validate_message(data, files, editing=True)
        message = _edit_original(server, interaction, data)
    elif kind not in (DEFERRED_UPDATE, UPDATE_MESSAGE, MODAL):
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
            "id": str(interaction.id),
            "type": 2,
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
    validate_message(body, files)
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
    validate_message(body, files, editing=True)
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
