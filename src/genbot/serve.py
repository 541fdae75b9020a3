"""``genbot serve``: any genbot chat backend as an OpenAI-compatible HTTP API.

This is how custom model code (a :class:`genbot.models.ChatStreamer` or any
:class:`genbot.Streamer` that takes a :class:`genbot.models.ChatRequest` and writes text
deltas) runs on GPU machines behind a load balancer, for bots that use the ``openai`` backend.

Routes: ``POST /v1/chat/completions`` (streaming as server-sent events, and not),
``GET /v1/models`` and ``GET /health`` (for load balancer checks: 200 while serving, 503 while
shutting down; it needs no API key).

**Admission.** At most ``parallel`` chats generate at once and at most ``queue`` more wait for a
slot; a chat beyond that is answered at once with 429 and ``Retry-After``, never queued without
bound. **Cancellation.** A client that disconnects cancels its request: the stream is closed and
the backend's slot is free at once. **Errors** have OpenAI's shape, ``{"error": {"message",
"type", "param", "code"}}``: 400 for a bad request (checked before anything is queued), 401 for
a missing or wrong API key (``GENBOT_API_KEY``; ``Authorization: Bearer <key>``), 429 when
full, 500 when the backend fails before its first text, 503 when its worker is dead or the
server shuts down. A failure after text was sent ends the stream with an ``error`` event and
no ``[DONE]``.

**Request fields.** ``messages`` (text content: a string or a list of ``text`` parts; roles
system, developer (read as system), user, assistant (with its ``tool_calls``), tool (with its
``tool_call_id``); ``name`` kept), ``tools`` (function schemas, given to the backend as
:attr:`genbot.models.ChatRequest.tools`), ``max_tokens`` /
``max_completion_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``, ``n`` (1 only),
``stream``, and ``repetition_penalty`` / ``repeat_penalty`` (vLLM's and llama.cpp's spelling).
Others (``frequency_penalty``, ``logprobs``, ``user``, ...) are ignored. Fields left out take
the server's configured generation settings. ``model`` is not checked: a server serves one
model. No system prompt is added. ``finish_reason`` is ``"length"`` when the backend wrote
``max_tokens`` deltas (every genbot backend writes one per token), else ``"stop"``; no token
usage is reported.

**Reasoning and tool calls.** A backend's :class:`~genbot.models.Reasoning` items are sent as
``reasoning_content`` (as vLLM and llama.cpp's server do), and its
:class:`~genbot.models.ToolCall` s as ``tool_calls`` (each whole in one delta), with
``finish_reason`` ``"tool_calls"``; a completion that is not streamed carries them in its
message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib
import json
import logging
import math
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from genbot.models.base import (
    ChatMessage,
    ChatRequest,
    GenerationSettings,
    Reasoning,
    Role,
    ToolCall,
    ToolCallDict,
)
from genbot.streaming import Streamer, StreamError, WorkerDied

__all__ = [
    "ChatCall",
    "ChatServer",
    "RequestError",
    "ServeError",
    "load_streamer",
    "parse_chat",
    "serve",
]

_log = logging.getLogger(__name__)

#: Seconds a client is told to wait (``Retry-After``) when every slot and the queue are taken.
RETRY_AFTER = 1
#: The largest seed (llama.cpp reads 2**32 - 1 as "random").
MAX_SEED = 2**32 - 2
#: Most stop strings in one request.
MAX_STOPS = 32
#: OpenAI roles -> genbot roles (``developer`` is OpenAI's newer name for ``system``).
ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestError(Exception):
    """A request the server refuses: the status and OpenAI's error fields.

    Parameters
    ----------
    message
        What is wrong, for the client.
    param
        The request field at fault, if one is.
    status, kind, code
        The HTTP status, the error ``type`` and ``code``.
    """

    def __init__(
        self,
        message: str,
        param: str | None = None,
        *,
        status: int = 400,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.kind = kind
        self.code = code

    def body(self) -> dict[str, Any]:
        """OpenAI's error JSON: ``{"error": {"message", "type", "param", "code"}}``."""
        error = {"message": self.message, "type": self.kind, "param": self.param}
        return {"error": {**error, "code": self.code}}


class ServeError(Exception):
    """``genbot serve`` cannot start: bad backend spec, or the address is taken."""


# -- requests: pure checks, one small function per field ----------------------------------------


@dataclass
class ChatCall:
    """A checked ``/v1/chat/completions`` request."""

    request: ChatRequest
    stream: bool = False


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object, param: str, low: float, high: float, *, low_open: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise RequestError(f"{param} must be a number, not {json.dumps(value)}", param)
    if isinstance(value, int) and abs(value) > 2**53:  # also beyond what a float holds
        raise RequestError(f"{param} is out of range", param)
    if not math.isfinite(value):
        raise RequestError(f"{param} must be a finite number", param)
    if (value <= low if low_open else value < low) or value > high:
        shown = f"in ({low:g}, {high:g}]" if low_open else f"from {low:g} to {high:g}"
        raise RequestError(f"{param} must be {shown}, not {value}", param)
    return float(value)


#: The most tokens one reply may ask for: what a 32-bit count holds (llama.cpp's), so a larger
#: number is a 400, not an overflow in the backend (or a negative "no limit" after wrapping).
MAX_TOKENS = 2**31 - 1


def _max_tokens(value: object, param: str) -> dict[str, Any]:
    if not _is_int(value) or not 1 <= value <= MAX_TOKENS:  # type: ignore[operator]
        shown = value if _is_int(value) and abs(value) < 10**12 else "…"  # type: ignore[arg-type]
        raise RequestError(
            f"{param} must be a whole number from 1 to {MAX_TOKENS}, not {shown}", param
        )
    return {"max_new_tokens": value}


def _temperature(value: object, param: str) -> dict[str, Any]:
    return {"temperature": _number(value, param, 0, 2)}


def _top_p(value: object, param: str) -> dict[str, Any]:
    return {"top_p": _number(value, param, 0, 1, low_open=True)}


def _repeat_penalty(value: object, param: str) -> dict[str, Any]:
    return {"repeat_penalty": _number(value, param, 0, 2, low_open=True)}


def _stop(value: object, param: str) -> dict[str, Any]:
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or not stops
        or len(stops) > MAX_STOPS
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise RequestError(
            f"{param} must be a non-empty string or a list of 1 to {MAX_STOPS} of them", param
        )
    return {"stop": list(stops)}


def _seed(value: object, param: str) -> dict[str, Any]:
    if not _is_int(value) or not 0 <= value <= MAX_SEED:  # type: ignore[operator]
        raise RequestError(f"{param} must be a whole number from 0 to {MAX_SEED}", param)
    return {"seed": value}


def _n(value: object, param: str) -> dict[str, Any]:
    if value != 1 or not _is_int(value):
        raise RequestError("n must be 1: one choice per request", param)
    return {}


def _stream(value: object, param: str) -> dict[str, Any]:
    if not isinstance(value, bool):
        raise RequestError(f"{param} must be true or false", param)
    return {"stream": value}


def _model(value: object, param: str) -> dict[str, Any]:
    if not isinstance(value, str):
        raise RequestError(f"{param} must be a string", param)
    return {}


#: Request field -> its check, returning what it sets (GenerationSettings fields, "stream").
#: A field set to null is left out; fields not here are ignored.
FIELDS: dict[str, Callable[[object, str], dict[str, Any]]] = {
    "model": _model,
    "stream": _stream,
    "max_tokens": _max_tokens,
    "max_completion_tokens": _max_tokens,
    "temperature": _temperature,
    "top_p": _top_p,
    "stop": _stop,
    "seed": _seed,
    "n": _n,
    "repetition_penalty": _repeat_penalty,
    "repeat_penalty": _repeat_penalty,
}


def _text(content: object, where: str) -> str:
    """A message's content: a string, or the text of a list of ``text`` parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(f"{where}.content must be a string or a list of text parts", where)
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text":
            raise RequestError(f"{where}.content: only text parts are supported", where)
        text = part.get("text")
        if not isinstance(text, str):
            raise RequestError(f"{where}.content: a text part needs a string 'text'", where)
        texts.append(text)
    return "".join(texts)


def _message(raw: object, index: int) -> ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise RequestError(f"{where} must be an object", where)
    given = raw.get("role")
    role = ROLES.get(given) if isinstance(given, str) else None
    if role is None:
        roles = ", ".join(ROLES)
        raise RequestError(f"{where}.role must be one of {roles}, not {raw.get('role')!r}", where)
    content = raw.get("content")
    # An assistant message that only called tools has null content.
    message: ChatMessage = {
        "role": role,
        "content": "" if content is None and role == "assistant" else _text(content, where),
    }
    name = raw.get("name")
    if name is not None:
        if not isinstance(name, str):
            raise RequestError(f"{where}.name must be a string", where)
        message["name"] = name
    if role == "tool":
        call_id = raw.get("tool_call_id")
        if not isinstance(call_id, str):
            raise RequestError(f"{where}: a tool message needs a string tool_call_id", where)
        message["tool_call_id"] = call_id
    if role == "assistant" and raw.get("tool_calls"):
        message["tool_calls"] = _tool_calls(raw["tool_calls"], where)
    return message


def _tool_calls(value: object, where: str) -> list[ToolCallDict]:
    """An assistant message's ``tool_calls``: ``[{"id", "type": "function", "function":
    {"name", "arguments"}}]``."""
    if not isinstance(value, list):
        raise RequestError(f"{where}.tool_calls must be a list", where)
    return [_tool_call(call, where) for call in value]


def _tool_call(call: object, where: str) -> ToolCallDict:
    function = call.get("function") if isinstance(call, dict) else None
    if isinstance(call, dict) and isinstance(function, dict):
        call_id, name, arguments = call.get("id"), function.get("name"), function.get("arguments")
        if isinstance(call_id, str) and isinstance(name, str) and isinstance(arguments, str):
            return {"id": call_id, "name": name, "arguments": arguments}
    raise RequestError(
        f"{where}.tool_calls: each needs a string id, function.name and function.arguments",
        where,
    )


def _tools(value: object) -> list[dict[str, Any]]:
    """The request's ``tools``: OpenAI function schemas, passed on to the backend."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(t, dict)
        and t.get("type") == "function"
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
        for t in value
    ):
        raise RequestError(
            'tools must be a list of {"type": "function", "function": {"name": ...}}', "tools"
        )
    return value


def parse_messages(value: object) -> list[ChatMessage]:
    """The request's ``messages``, checked.

    Raises
    ------
    RequestError
        Not a non-empty list of text messages with known roles and at least one user or
        assistant message.
    """
    if not isinstance(value, list) or not value:
        raise RequestError("messages must be a non-empty list", "messages")
    messages = [_message(raw, i) for i, raw in enumerate(value)]
    if all(m["role"] == "system" for m in messages):
        raise RequestError("messages needs at least one user or assistant message", "messages")
    return messages


def parse_chat(body: object, defaults: GenerationSettings) -> ChatCall:
    """Check a ``/v1/chat/completions`` request body and turn it into a :class:`ChatCall`.

    Parameters
    ----------
    body
        The decoded JSON body.
    defaults
        The generation settings for the fields the request leaves out.

    Raises
    ------
    RequestError
        The body is not an object, or a field has a bad value (see :data:`FIELDS`).
    """
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if "messages" not in body:
        raise RequestError("messages is required", "messages")
    messages = parse_messages(body["messages"])
    values: dict[str, Any] = {}
    for name, value in body.items():
        check = FIELDS.get(name)
        if check is not None and value is not None:
            values.update(check(value, name))
    stream = bool(values.pop("stream", False))
    try:
        settings = replace(defaults, **{"stop": list(defaults.stop), **values})
    except ValueError as error:
        raise RequestError(str(error)) from None
    request = ChatRequest(messages=messages, settings=settings, tools=_tools(body.get("tools")))
    return ChatCall(request, stream=stream)


def finish_reason(deltas: int, max_new_tokens: int) -> str:
    """``"length"`` when the backend wrote ``max_new_tokens`` deltas (one per token), else
    ``"stop"``."""
    return "length" if deltas >= max_new_tokens else "stop"


# -- responses ------------------------------------------------------------------------------


class Completion:
    """One completion's id and the JSON and server-sent events that carry it.

    The part of a chunk around the text is built once, so a delta costs one ``json.dumps``.
    """

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        head = json.dumps(
            {"id": self.id, "object": "chat.completion.chunk", "created": self.created}
        )[:-1]
        self._head = f'data: {head}, "model": {json.dumps(model)}, "choices": [{{"index": 0, '
        self._text_head = (self._head + '"delta": {"content": ').encode()
        self._text_tail = b'}, "logprobs": null, "finish_reason": null}]}\n\n'

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"delta": delta, "logprobs": None, "finish_reason": finish}
        return f"{self._head}{json.dumps(choice)[1:]}]}}\n\n".encode()

    def first(self) -> bytes:
        """The first event: the assistant's role."""
        return self._chunk({"role": "assistant", "content": ""}, None)

    def text(self, delta: str) -> bytes:
        """The event for one text delta."""
        return self._text_head + json.dumps(delta).encode() + self._text_tail

    def reasoning(self, text: str) -> bytes:
        """The event for one delta of reasoning (``reasoning_content``)."""
        return self._chunk({"reasoning_content": text}, None)

    def tool_call(self, index: int, call: ToolCall) -> bytes:
        """The event for one whole tool call, the ``index``-th of the reply."""
        return self._chunk({"tool_calls": [{"index": index, **_call_json(call)}]}, None)

    def last(self, finish: str) -> bytes:
        """The last events: the finish reason, then ``[DONE]``."""
        return self._chunk({}, finish) + b"data: [DONE]\n\n"

    def message(self, reply: Reply, finish: str) -> dict[str, Any]:
        """The whole (not streamed) completion."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(reply.text)}
        if reply.reasoning:
            message["reasoning_content"] = "".join(reply.reasoning)
        if reply.calls:
            message["tool_calls"] = [_call_json(call) for call in reply.calls]
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": finish,
        }
        head = {"id": self.id, "object": "chat.completion", "created": self.created}
        return {**head, "model": self.model, "choices": [choice]}


def _call_json(call: ToolCall) -> dict[str, Any]:
    function = {"name": call.name, "arguments": call.arguments}
    return {"id": call.id, "type": "function", "function": function}


class Reply:
    """What a backend's chat stream said so far: text deltas, reasoning, tool calls."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[ToolCall] = []

    def take(self, item: object, completion: Completion) -> bytes:
        """Keep one item of the stream; the event that streams it.

        Raises :class:`genbot.StreamError` for an item that is none of the three."""
        if isinstance(item, str):
            self.text.append(item)
            return completion.text(item)
        if isinstance(item, Reasoning):
            self.reasoning.append(item.text)
            return completion.reasoning(item.text)
        if isinstance(item, ToolCall):
            self.calls.append(item)
            return completion.tool_call(len(self.calls) - 1, item)
        raise StreamError(f"the backend wrote a {type(item).__name__}, not text")

    def finish(self, max_new_tokens: int) -> str:
        """``"tool_calls"`` when the model called tools, else :func:`finish_reason`."""
        if self.calls:
            return "tool_calls"
        return finish_reason(len(self.text) + len(self.reasoning), max_new_tokens)


def stream_error_event(error: BaseException) -> bytes:
    """The event that ends a stream which failed after its first text."""
    body = RequestError(_first_line(error), status=500, kind="server_error").body()
    return f"data: {json.dumps(body)}\n\n".encode()


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def backend_error(error: StreamError) -> RequestError:
    """What a backend failure before any text is sent becomes: 503 for a dead worker (a load
    balancer may retry elsewhere), else 500."""
    if isinstance(error, WorkerDied):
        return RequestError(_first_line(error), status=503, kind="server_error")
    return RequestError(_first_line(error), status=500, kind="server_error")


def _json_error(error: RequestError, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=headers)


# -- the server ---------------------------------------------------------------------------------


class ChatServer:
    """The HTTP API over one started :class:`genbot.Streamer`; :meth:`app` builds it.

    Parameters
    ----------
    backend
        The streamer that generates; it takes a :class:`ChatRequest` and writes text.
    model
        The model id that ``/v1/models`` lists and responses carry.
    defaults
        Generation settings for what requests leave out.
    parallel, queue
        How many chats generate at once, and how many more may wait; beyond: 429.
    api_key
        The key clients must bring (``Authorization: Bearer``); ``None``: none needed.

    Raises
    ------
    ValueError
        ``parallel`` is less than 1 or ``queue`` negative.
    """

    def __init__(
        self,
        backend: Streamer,
        *,
        model: str,
        defaults: GenerationSettings | None = None,
        parallel: int = 4,
        queue: int | None = None,
        api_key: str | None = None,
    ) -> None:
        queue = 2 * parallel if queue is None else queue
        if parallel < 1 or queue < 0:
            raise ValueError(f"need parallel >= 1 and queue >= 0, not {parallel} and {queue}")
        self.backend = backend
        self.model = model
        self.defaults = defaults or GenerationSettings()
        self.parallel = parallel
        self.queue = queue
        self.api_key = api_key or None
        self.in_flight = 0  # chats admitted and not answered yet (generating or waiting)
        self.draining = False
        self.served = 0
        self.cancelled = 0

    def app(self) -> web.Application:
        """The aiohttp application (run it with ``handler_cancellation=True``, so that a client
        that goes away cancels its request)."""
        app = web.Application(middlewares=[self._errors, self._auth], client_max_size=16 << 20)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        return app

    # -- middlewares --

    @web.middleware
    async def _errors(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except RequestError as error:
            return _json_error(error)
        except StreamError as error:
            _log.warning("the backend failed: %s", _first_line(error))
            return _json_error(backend_error(error))
        except web.HTTPException as error:
            if error.status < 400:
                raise
            return _json_error(RequestError(error.reason, status=error.status))

    @web.middleware
    async def _auth(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        if self.api_key is None or request.path == "/health":
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"), self.api_key.encode()
        ):
            raise RequestError(
                "missing or wrong API key (Authorization: Bearer <key>)",
                status=401,
                code="invalid_api_key",
            )
        return await handler(request)

    # -- routes --

    async def health(self, request: web.Request) -> web.Response:
        """200 ``{"status": "ok", ...}`` while serving; 503 while shutting down."""
        body = {
            "status": "draining" if self.draining else "ok",
            "model": self.model,
            "parallel": self.parallel,
            "queue": self.queue,
            "in_flight": self.in_flight,
            "served": self.served,
            "cancelled": self.cancelled,
        }
        return web.json_response(body, status=503 if self.draining else 200)

    async def models(self, request: web.Request) -> web.Response:
        """The one model served, as OpenAI lists models."""
        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "genbot"}
        return web.json_response({"object": "list", "data": [model]})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """Answer a chat completion, streamed or not; see the module docstring."""
        try:
            body = await request.json()
        except (ValueError, LookupError, RecursionError) as error:  # LookupError: bad charset
            raise RequestError(f"the request body is not valid JSON ({error})") from None
        call = parse_chat(body, self.defaults)
        refused = self._admit()
        if refused is not None:
            return refused
        try:
            if call.stream:
                return await self._stream(request, call)
            return await self._complete(call)
        except (asyncio.CancelledError, ConnectionResetError) as gone:
            # Gone while waiting or generating (the handler is cancelled), or seen by a write.
            self.cancelled += 1
            _log.info("a client went away; its generation was cancelled")
            if isinstance(gone, asyncio.CancelledError):
                raise
            return web.Response(status=499)  # nobody reads it; aiohttp logs nothing
        finally:
            self.in_flight -= 1

    def _admit(self) -> web.Response | None:
        """Count a chat in, or the response that refuses it (429 when full, 503 draining)."""
        retry = {"Retry-After": str(RETRY_AFTER)}
        if self.draining:
            return _json_error(
                RequestError("the server is shutting down", status=503, kind="server_error"), retry
            )
        if self.in_flight >= self.parallel + self.queue:
            error = RequestError(
                f"the server is busy: all {self.parallel} slots and the {self.queue} places in "
                "its queue are taken; retry later",
                status=429,
                kind="rate_limit_error",
                code="rate_limit_exceeded",
            )
            return _json_error(error, retry)
        self.in_flight += 1
        return None

    async def _complete(self, call: ChatCall) -> web.Response:
        completion, reply = Completion(self.model), Reply()
        async with self.backend.stream() as stream:
            async for item in stream(call.request):
                reply.take(item, completion)
        self.served += 1
        finish = reply.finish(call.request.settings.max_new_tokens)
        return web.json_response(completion.message(reply, finish))

    async def _stream(self, request: web.Request, call: ChatCall) -> web.StreamResponse:
        """Stream the reply; the response starts with the first text (or the end), so that a
        failure before it gets a proper status."""
        completion, reply = Completion(self.model), Reply()
        response: web.StreamResponse | None = None
        async with self.backend.stream() as stream:
            try:
                async for item in stream(call.request):
                    event = reply.take(item, completion)
                    if response is None:
                        response = await self._start_events(request, completion)
                    await response.write(event)
            except StreamError as error:
                if response is None:
                    raise
                _log.warning("the backend failed mid-stream: %s", _first_line(error))
                await response.write(stream_error_event(error))
                await response.write_eof()
                return response
        if response is None:
            response = await self._start_events(request, completion)
        finish = reply.finish(call.request.settings.max_new_tokens)
        await response.write(completion.last(finish))
        await response.write_eof()
        self.served += 1
        return response

    @staticmethod
    async def _start_events(request: web.Request, completion: Completion) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # no proxy buffering (nginx)
            }
        )
        await response.prepare(request)
        await response.write(completion.first())
        return response


# -- loading and running -------------------------------------------------------------------------


def load_streamer(spec: str) -> Streamer:
    """The :class:`genbot.Streamer` that ``MODULE:ATTR`` names: a Streamer, or a class or
    function that makes one when called with no arguments. The current directory is importable,
    as for ``python -m``.

    Parameters
    ----------
    spec
        ``MODULE:ATTR``, e.g. ``mymodel:MyStreamer``.

    Raises
    ------
    ServeError
        ``spec`` is not ``MODULE:ATTR``, cannot be imported, or does not give a Streamer.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ServeError(f"{spec!r}: expected MODULE:ATTR, e.g. mymodel:MyStreamer")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: object = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ServeError(f"cannot load {spec}: {error}") from error
    if not isinstance(found, Streamer) and callable(found):
        try:
            found = found()
        except Exception as error:
            raise ServeError(f"cannot make a streamer with {spec}(): {error}") from error
    if not isinstance(found, Streamer):
        raise ServeError(f"{spec} is a {type(found).__name__}, not a genbot Streamer")
    return found


def model_id(model: str, fallback: str) -> str:
    """The id a served model is listed as: a file path's name without ``.gguf``, a local
    folder's name (an absolute path, or one starting with ``.`` or ``~``: e.g. a transformers
    model saved to disk), a Hugging Face name as is, or ``fallback`` when ``model`` is empty."""
    if not model:
        return fallback
    path = Path(model)
    if path.suffix == ".gguf":
        return path.stem
    local = path.is_absolute() or model.startswith((".", "~"))
    return path.name if local and path.name else model


async def serve(
    server: ChatServer,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    grace: float = 30.0,
    warm_up_timeout: float = 600.0,
    stop: asyncio.Event | None = None,
) -> None:
    """Start ``server.backend`` (if it is not running), warm it up, then serve HTTP until
    SIGINT or SIGTERM (or ``stop`` is set).

    Shutting down: ``/health`` answers 503 and new chats 503, the listening socket closes,
    chats in flight get ``grace`` seconds to finish and are then cancelled, and the backend is
    closed.

    Parameters
    ----------
    server
        What to serve.
    host, port
        Where to listen; port 0 picks a free port (logged).
    grace
        Seconds that chats in flight may still take at shutdown.
    warm_up_timeout
        Seconds the backend may take to generate its first token.
    stop
        Set it to shut down (signals set it too).

    Raises
    ------
    genbot.StreamError, TimeoutError
        The backend failed to warm up.
    ServeError
        Cannot listen on ``host:port``.
    """
    from genbot.chatbot import warm_up

    stop = stop or asyncio.Event()
    backend = server.backend
    try:
        if not backend.running:
            backend.start_process()
        _log.info("warming up the model %s...", server.model)
        seconds = await warm_up(backend, warm_up_timeout)
        _log.info("model %s ready in %.1f s", server.model, seconds)
        await _listen(server, host, port, grace, stop)
    finally:
        backend.close()


async def _listen(
    server: ChatServer, host: str, port: int, grace: float, stop: asyncio.Event
) -> None:
    loop = asyncio.get_running_loop()
    runner = web.AppRunner(
        server.app(), handler_cancellation=True, shutdown_timeout=grace, access_log=None
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, shutdown_timeout=grace)
        try:
            await site.start()
        except OSError as error:
            raise ServeError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        address = runner.addresses[0]
        _log.info(
            "serving %s at http://%s:%d/v1 (%d at once, %d more queued)",
            server.model,
            host,
            address[1],
            server.parallel,
            server.queue,
        )
        await stop.wait()
        _log.info("shutting down: %d chats in flight get %.0f s to finish", server.in_flight, grace)
        server.draining = True
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
        await runner.cleanup()
    _log.info("stopped")
