"""Application commands and interactions: command sync, the INTERACTION_CREATE payload of an
invoked slash command, and the bot's answers (callbacks, followups, the original response)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .components import MESSAGE_COMPONENT, FakeComponentInteraction
from .models import EPHEMERAL, FakeInteraction, FakeUser, Upload, iso_time
from .payloads import (
    ApiError,
    form_error,
    guild_of,
    json_response,
    make_attachments,
    no_content,
    read_body,
    read_json,
    snowflake,
    unknown_message,
    validate_message,
)
from .permissions import channel_permissions
from .routes import Route
from .state import ServerState

__all__ = [
    "CALLBACKS",
    "ROUTES",
    "component_payload",
    "delete_webhook_message",
    "edit_webhook_message",
    "followup",
    "get_commands",
    "get_webhook_message",
    "interaction_callback",
    "interaction_payload",
    "overwrite_commands",
]

_log = logging.getLogger(__name__)

LOADING = 1 << 7  # message flag of a deferred "thinking..." response
CHAT_INPUT_COMMAND = 20
# Interaction callback types.
CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE, MODAL = 4, 5, 6, 7, 9
AUTOCOMPLETE_RESULT = 8
ALL_PERMISSIONS = (1 << 53) - 1


def _scope(state: ServerState, request: web.Request) -> int | None:
    if snowflake(request.match_info["application_id"]) != state.application_id:
        raise ApiError(403, 50001, "Missing Access")
    if "guild_id" not in request.match_info:
        return None
    return guild_of(state, request).id


async def get_commands(state: ServerState, request: web.Request) -> web.Response:
    return json_response(state.commands.get(_scope(state, request), []))


async def overwrite_commands(state: ServerState, request: web.Request) -> web.Response:
    scope = _scope(state, request)
    body, _ = await read_json(request)
    if not isinstance(body, list):
        raise form_error("_", "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
    old = {(c["name"], c["type"]): c["id"] for c in state.commands.get(scope, [])}
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
                "id": old.get((name, kind)) or str(state.snowflakes.next()),
                "application_id": str(state.application_id),
                "version": str(state.snowflakes.next()),
            }
            | ({} if scope is None else {"guild_id": str(scope)})
        )
    state.set_commands(scope, commands)
    return json_response(commands)


def interaction_payload(
    state: ServerState,
    interaction: FakeInteraction,
    command: dict[str, Any],
    values: dict[str, Any],
) -> dict[str, Any]:
    """The INTERACTION_CREATE payload of a chat-input command invoked with option `values`."""
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
    options: list[dict[str, Any]] = []
    resolved: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if name not in by_name:
            raise ValueError(f"/{interaction.name} has no option {name!r}")
        kind = int(by_name[name]["type"])
        if kind in (6, 9):  # USER, MENTIONABLE
            target = value if isinstance(value, FakeUser) else state.users[int(value)]
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
    return _payload(state, interaction, 2, data)


def component_payload(
    state: ServerState, interaction: FakeComponentInteraction, component: dict[str, Any]
) -> dict[str, Any]:
    """The INTERACTION_CREATE payload of a user pressing `component` (a button) on
    ``interaction.message``: a MESSAGE_COMPONENT interaction (type 3)."""
    data = {"custom_id": component["custom_id"], "component_type": int(component["type"])}
    payload = _payload(state, interaction, MESSAGE_COMPONENT, data)
    payload["message"] = interaction.message
    return payload


def _payload(
    state: ServerState, interaction: FakeInteraction, kind: int, data: dict[str, Any]
) -> dict[str, Any]:
    """What every INTERACTION_CREATE carries: who, where, the token, and `data`."""
    channel, user = interaction.channel, interaction.user
    payload: dict[str, Any] = {
        "id": str(interaction.id),
        "application_id": str(state.application_id),
        "type": kind,
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
        guild = state.guilds[channel.guild_id]
        member = guild.members[user.id]
        # what the member may do in this channel, as Discord computes it (roles, overwrites)
        allowed = channel_permissions(guild, channel, user.id)
        payload.update(
            guild_id=str(channel.guild_id),
            guild_locale="en-US",
            guild={"id": str(channel.guild_id), "locale": "en-US", "features": []},
            member=member.to_json() | {"permissions": str(allowed)},
            authorizing_integration_owners={"0": str(channel.guild_id)},
            context=0,
        )
    else:
        payload.update(
            user=user.to_json(), authorizing_integration_owners={"1": str(user.id)}, context=1
        )
    return payload


# -- interaction responses -----------------------------------------------------------------------


def _interaction(state: ServerState, request: web.Request) -> FakeInteraction:
    interaction = state.interactions.get(request.match_info["interaction_token"])
    if interaction is None or (
        "interaction_id" in request.match_info
        and snowflake(request.match_info["interaction_id"]) != interaction.id
    ):
        raise ApiError(404, 10062, "Unknown interaction")
    if "application_id" in request.match_info and (
        snowflake(request.match_info["application_id"]) != state.application_id
    ):
        raise ApiError(404, 10015, "Unknown Webhook")
    return interaction


def _response_message(
    state: ServerState,
    interaction: FakeInteraction,
    body: dict[str, Any],
    files: list[Upload],
    flags: int,
) -> dict[str, Any]:
    """A message the bot makes through an interaction; kept in the channel unless ephemeral."""
    channel = interaction.channel
    metadata: dict[str, Any] = {
        "id": str(interaction.id),
        "type": 2,
        "name": interaction.name,
        "user": interaction.user.to_json(),
        "command_type": 1,
        "authorizing_integration_owners": interaction.payload["authorizing_integration_owners"],
    }
    if isinstance(interaction, FakeComponentInteraction):
        metadata = {k: metadata[k] for k in ("id", "user", "authorizing_integration_owners")}
        metadata.update(type=MESSAGE_COMPONENT, interacted_message_id=interaction.message["id"])
    extra = {
        "type": 0 if isinstance(interaction, FakeComponentInteraction) else CHAT_INPUT_COMMAND,
        "flags": flags,
        "webhook_id": str(state.application_id),
        "application_id": str(state.application_id),
        "interaction_metadata": metadata,
        "interaction": {k: metadata.get(k, "") for k in ("id", "type", "name", "user")},
    }
    message = state.create_message(
        channel,
        state.bot_user,
        body,
        attachments=make_attachments(state, channel, body, files),
        extra=extra,
    )
    if flags & EPHEMERAL:
        del channel.messages[int(message["id"])]
    return message


async def interaction_callback(state: ServerState, request: web.Request) -> web.Response:
    """The bot's first answer to an interaction, handled by callback type (`CALLBACKS`)."""
    interaction = _interaction(state, request)
    if interaction.acknowledged:
        raise ApiError(400, 40060, "Interaction has already been acknowledged.")
    body, files = await read_body(request)
    kind = int(body.get("type", 0))
    callback = CALLBACKS.get(kind)
    if callback is None:
        choices = ", ".join(str(k) for k in sorted(CALLBACKS))
        raise form_error("type", "BASE_TYPE_CHOICES", f"Value must be one of {{{choices}}}.")
    message = await callback(state, interaction, body.get("data") or {}, files)
    interaction.record("callback", body, message, kind)
    if request.query.get("with_response") not in ("1", "true", "True"):
        return no_content()
    result: dict[str, Any] = {
        "interaction": {
            "id": str(interaction.id),
            "type": interaction.payload.get("type", 2),
            "response_message_id": None if message is None else message["id"],
            "response_message_loading": kind == DEFERRED_CHANNEL_MESSAGE,
            "response_message_ephemeral": interaction.ephemeral,
        }
    }
    if message is not None:
        result["resource"] = {"type": kind, "message": message}
    return json_response(result)


async def _reply(
    state: ServerState, interaction: FakeInteraction, data: dict[str, Any], files: list[Upload]
) -> dict[str, Any] | None:
    """CHANNEL_MESSAGE_WITH_SOURCE: the response message, made now."""
    validate_message(data, files)
    flags = int(data.get("flags") or 0) & EPHEMERAL
    message = _response_message(state, interaction, data, files, flags)
    await _open_response(state, interaction, message)
    return message


async def _defer(
    state: ServerState, interaction: FakeInteraction, data: dict[str, Any], files: list[Upload]
) -> dict[str, Any] | None:
    """DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: a "thinking..." message, filled in later."""
    flags = (int(data.get("flags") or 0) & EPHEMERAL) | LOADING
    message = _response_message(state, interaction, {}, [], flags)
    interaction.deferred = True
    await _open_response(state, interaction, message)
    return message


async def _update(
    state: ServerState, interaction: FakeInteraction, data: dict[str, Any], files: list[Upload]
) -> dict[str, Any] | None:
    """UPDATE_MESSAGE: edits the message the pressed button is on (which becomes the original
    response), or a command's original response, when there is one."""
    _adopt_pressed(interaction)
    if interaction.original is None:
        return None
    validate_message(data, files, editing=True)
    message = _edit_original(state, interaction, data)
    if int(message["id"]) in interaction.channel.messages:
        await state.dispatch_message("MESSAGE_UPDATE", message)
    return message


async def _acknowledge(
    state: ServerState, interaction: FakeInteraction, data: dict[str, Any], files: list[Upload]
) -> dict[str, Any] | None:
    """DEFERRED_UPDATE_MESSAGE, MODAL, AUTOCOMPLETE_RESULT: acknowledged, no message. After a
    button press, the message the button is on is the original response, for later edits."""
    _adopt_pressed(interaction)
    return None


def _adopt_pressed(interaction: FakeInteraction) -> None:
    """A component interaction's original response is the message its button is on."""
    if isinstance(interaction, FakeComponentInteraction) and interaction.original is None:
        interaction.original = interaction.message


async def _open_response(
    state: ServerState, interaction: FakeInteraction, message: dict[str, Any]
) -> None:
    interaction.original = message
    interaction.ephemeral = bool(message["flags"] & EPHEMERAL)
    if not interaction.ephemeral:
        await state.dispatch_message("MESSAGE_CREATE", message)


Callback = Callable[
    [ServerState, FakeInteraction, dict[str, Any], list[Upload]],
    Awaitable["dict[str, Any] | None"],
]

# The interaction callback types the bot may answer with, and what each does.
CALLBACKS: dict[int, Callback] = {
    CHANNEL_MESSAGE: _reply,
    DEFERRED_CHANNEL_MESSAGE: _defer,
    DEFERRED_UPDATE: _acknowledge,
    UPDATE_MESSAGE: _update,
    MODAL: _acknowledge,
    AUTOCOMPLETE_RESULT: _acknowledge,  # the choices are in the recorded payload's data
}


def _edit_original(
    state: ServerState, interaction: FakeInteraction, body: dict[str, Any]
) -> dict[str, Any]:
    original = interaction.original
    assert original is not None
    if original["flags"] & LOADING:
        body = body | {"flags": original["flags"] & ~LOADING}
    if int(original["id"]) in interaction.channel.messages:
        return state.update_message(interaction.channel, int(original["id"]), body)
    for key in ("content", "embeds", "components", "flags"):
        if body.get(key) is not None:
            original[key] = body[key]
    original["edited_timestamp"] = iso_time()
    state.changed()
    return original


async def followup(state: ServerState, request: web.Request) -> web.Response:
    interaction = _interaction(state, request)
    if not interaction.acknowledged:
        raise ApiError(404, 10015, "Unknown Webhook")
    body, files = await read_body(request)
    validate_message(body, files)
    original = interaction.original
    if original is not None and original["flags"] & LOADING:
        # The first followup after a deferral fills in the "thinking..." message.
        message = _edit_original(state, interaction, body)
        event = "MESSAGE_UPDATE"
    else:
        flags = int(body.get("flags") or 0) & EPHEMERAL
        message = _response_message(state, interaction, body, files, flags)
        event = "MESSAGE_CREATE"
    if int(message["id"]) in interaction.channel.messages:
        await state.dispatch_message(event, message)
    interaction.record("followup", body, message)
    wait = request.query.get("wait") in ("1", "true", "True")
    return json_response(message) if wait else no_content()


def _webhook_message(interaction: FakeInteraction, request: web.Request) -> dict[str, Any]:
    message_id = request.match_info.get("message_id", "@original")
    if message_id == "@original":
        if interaction.original is None:
            raise unknown_message()
        return interaction.original
    for response in interaction.responses:
        message: dict[str, Any] | None = response["message"]
        if message is not None and message["id"] == message_id:
            return message
    raise unknown_message()


async def get_webhook_message(state: ServerState, request: web.Request) -> web.Response:
    return json_response(_webhook_message(_interaction(state, request), request))


async def edit_webhook_message(state: ServerState, request: web.Request) -> web.Response:
    interaction = _interaction(state, request)
    message = _webhook_message(interaction, request)
    body, files = await read_body(request)
    validate_message(body, files, editing=True)
    if message is interaction.original:
        message = _edit_original(state, interaction, body)
    elif int(message["id"]) in interaction.channel.messages:
        message = state.update_message(interaction.channel, int(message["id"]), body)
    if int(message["id"]) in interaction.channel.messages:
        await state.dispatch_message("MESSAGE_UPDATE", message)
    interaction.record("edit", body, message)
    return json_response(message)


async def delete_webhook_message(state: ServerState, request: web.Request) -> web.Response:
    interaction = _interaction(state, request)
    message = _webhook_message(interaction, request)
    if int(message["id"]) in interaction.channel.messages:
        await state.delete_messages(interaction.channel, [int(message["id"])])
    interaction.record("delete", {}, message)
    return no_content()


ROUTES: list[Route] = [
    Route("GET", "/applications/{application_id}/commands", get_commands),
    Route("PUT", "/applications/{application_id}/commands", overwrite_commands),
    Route("GET", "/applications/{application_id}/guilds/{guild_id}/commands", get_commands),
    Route("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", overwrite_commands),
    Route(
        "POST", "/interactions/{interaction_id}/{interaction_token}/callback", interaction_callback
    ),
    Route("POST", "/webhooks/{application_id}/{interaction_token}", followup),
    Route(
        "GET",
        "/webhooks/{application_id}/{interaction_token}/messages/@original",
        get_webhook_message,
    ),
    Route(
        "PATCH",
        "/webhooks/{application_id}/{interaction_token}/messages/@original",
        edit_webhook_message,
    ),
    Route(
        "DELETE",
        "/webhooks/{application_id}/{interaction_token}/messages/@original",
        delete_webhook_message,
    ),
    Route(
        "PATCH",
        "/webhooks/{application_id}/{interaction_token}/messages/{message_id}",
        edit_webhook_message,
    ),
    Route(
        "DELETE",
        "/webhooks/{application_id}/{interaction_token}/messages/{message_id}",
        delete_webhook_message,
    ),
]
