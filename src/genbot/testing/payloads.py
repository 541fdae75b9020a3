"""Discord's shapes for the REST half: error answers, JSON responses, request bodies (JSON or
multipart), message validation, and the lookups every handler starts with."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from .models import FakeChannel, FakeGuild, Upload, snowflake_time

if TYPE_CHECKING:
    from .state import ServerState

__all__ = [
    "ApiError",
    "channel_of",
    "form_error",
    "guild_of",
    "json_response",
    "make_attachments",
    "message_of",
    "no_content",
    "nonce_duplicate",
    "read_body",
    "read_json",
    "reply_reference",
    "snowflake",
    "unknown_channel",
    "unknown_message",
    "validate_message",
]

_log = logging.getLogger(__name__)

MAX_CONTENT = 2000
# How long Discord remembers a nonce for ``enforce_nonce`` ("the past few minutes").
NONCE_WINDOW = 300.0


class ApiError(Exception):
    """An error answered as Discord does: ``{"message", "code"[, "errors"]}`` with a status."""

    def __init__(
        self, status: int, code: int, message: str, errors: dict[str, Any] | None = None
    ) -> None:
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
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def no_content() -> web.Response:
    return web.Response(status=204)


def unknown_channel() -> ApiError:
    return ApiError(404, 10003, "Unknown Channel")


def unknown_message() -> ApiError:
    return ApiError(404, 10008, "Unknown Message")


async def read_json(request: web.Request) -> tuple[Any, list[Upload]]:
    """The JSON of a JSON or multipart (``payload_json`` + ``files[n]``) request body, whatever
    its shape, and the uploaded files.

    Raises
    ------
    ApiError
        50109 when the body is not JSON.
    """
    if request.content_type == "multipart/form-data":
        payload: Any = {}
        files = []
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue  # a nested multipart: Discord's API has none
            name = part.name or ""
            if name == "payload_json":
                payload = _parse(await part.text())
            elif name.startswith("files["):
                index = int(name[len("files[") : -1])
                data = bytes(await part.read())
                content_type = part.headers.get("Content-Type", "application/octet-stream")
                files.append(Upload(index, part.filename or f"file{index}", content_type, data))
        return payload, files
    if not request.can_read_body:
        return {}, []
    return _parse(await request.text()), []


async def read_body(request: web.Request) -> tuple[dict[str, Any], list[Upload]]:
    """`read_json` for the routes whose body is a JSON object.

    Raises
    ------
    ApiError
        50109 when the body is not JSON, 50035 when it is not an object.
    """
    payload, files = await read_json(request)
    if not isinstance(payload, dict):
        raise form_error("_", "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
    return payload, files


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise ApiError(400, 50109, "The request body contains invalid JSON.") from error


def channel_of(state: ServerState, request: web.Request) -> FakeChannel:
    """The ``{channel_id}`` of the route, which the bot must be able to see.

    Raises
    ------
    ApiError
        10003 Unknown Channel, or 50001 Missing Access when the bot left its guild.
    """
    channel = state.channels.get(snowflake(request.match_info["channel_id"]))
    if channel is None:
        raise unknown_channel()
    if not state.bot_can_access(channel):
        raise ApiError(403, 50001, "Missing Access")
    return channel


def message_of(channel: FakeChannel, request: web.Request) -> dict[str, Any]:
    message = channel.messages.get(snowflake(request.match_info["message_id"]))
    if message is None:
        raise unknown_message()
    return message


def guild_of(state: ServerState, request: web.Request) -> FakeGuild:
    guild = state.guilds.get(snowflake(request.match_info["guild_id"]))
    if guild is None:
        raise ApiError(404, 10004, "Unknown Guild")
    return guild


def snowflake(value: str) -> int:
    try:
        return int(value)
    except ValueError as error:
        message = f'Value "{value}" is not snowflake.'
        raise form_error("id", "NUMBER_TYPE_COERCE", message) from error


def validate_message(body: dict[str, Any], files: list[Upload], *, editing: bool = False) -> None:
    """Discord's checks of a create (or edit) message body.

    Raises
    ------
    ApiError
        50035 for content over 2000 characters, 50006 for an empty new message.
    """
    content = body.get("content")
    if content is not None and len(content) > MAX_CONTENT:
        raise form_error(
            "content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT} or fewer in length."
        )
    from .components import validate_components  # components: buttons (issue 8)

    validate_components(body)
    if editing:
        return
    if not (
        (content or "").strip()
        or body.get("embeds")
        or files
        or body.get("sticker_ids")
        or body.get("components")
        or body.get("poll")
        or body.get("attachments")
    ):
        raise ApiError(400, 50006, "Cannot send an empty message")


def make_attachments(
    state: ServerState, channel: FakeChannel, body: dict[str, Any], files: list[Upload]
) -> list[dict[str, Any]]:
    """Store the uploaded files; their attachment JSON, with the names and descriptions that
    the body's ``attachments`` give them."""
    described = {int(a["id"]): a for a in body.get("attachments") or [] if "id" in a}
    made = []
    for upload in sorted(files):
        meta = described.get(upload.number, {})
        attachment = state.store_file(channel, upload, meta.get("filename", upload.filename))
        made.append(attachment | {"description": meta.get("description")})
    return made


def reply_reference(channel: FakeChannel, body: dict[str, Any]) -> dict[str, Any] | None:
    """The ``message_reference`` of a reply, or None (a reply to a missing message without
    ``fail_if_not_exists`` is sent as a plain message).

    Raises
    ------
    ApiError
        50035 when the replied-to message does not exist and the body insists.
    """
    reference: dict[str, Any] | None = body.get("message_reference")
    if not reference or reference.get("message_id") is None:
        return None
    if int(reference["message_id"]) not in channel.messages:
        if reference.get("fail_if_not_exists", True):
            raise form_error(
                "message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
            )
        return None
    return reference


def nonce_duplicate(
    channel: FakeChannel, author_id: int, body: dict[str, Any], now: float | None = None
) -> dict[str, Any] | None:
    """The message `author_id` already made in `channel` with this body's nonce in the last
    `NONCE_WINDOW` seconds, when the body asks for ``enforce_nonce`` (Discord then returns that
    message instead of creating another); None otherwise."""
    nonce = body.get("nonce")
    if not body.get("enforce_nonce") or nonce is None:
        return None
    moment = time.time() if now is None else now
    for message_id, message in reversed(channel.messages.items()):
        if moment - snowflake_time(message_id) > NONCE_WINDOW:
            break
        if str(message.get("nonce")) == str(nonce) and message["author"]["id"] == str(author_id):
            return message
    return None
