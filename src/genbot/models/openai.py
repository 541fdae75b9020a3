"""OpenAI-compatible HTTP backend: vLLM, TGI, SGLang, Ollama, llama.cpp's server, OpenAI, ...

The worker runs an asyncio loop with one aiohttp session and serves each stream it takes as
one streaming chat completion (``POST {base_url}/chat/completions``, ``"stream": true``). The
server-sent events are read by a lean reader of its own (:class:`EventReader`): per event it
decodes the JSON and takes ``choices[0].delta.content`` and ``finish_reason``; the text of
the events that arrived together is written to the caller as one delta, and the caller's
stream ends at the ``finish_reason`` (the connection is then read to its end, so that it can
be used again). At most ``max_concurrency`` requests are in flight (the worker takes no more
streams than that).

Timeouts, each its own:

- ``connect_timeout`` (10 s): opening a connection to the server.
- ``first_token_timeout`` (60 s, as model loading and long prompts are slow): from the start
  of a request to the first event of its reply, retries and their waits included.
- ``token_timeout`` (30 s): the longest gap between two events once the reply streams (the
  "stall" timeout; the ready-made bot's own ``stall_timeout`` is a separate watchdog that
  covers every backend).

A timed-out request is closed and fails with :class:`APITimeoutError`; the caller sees the
first-token and the token timeouts as :class:`genbot.streaming.FirstTokenTimeout` and
:class:`genbot.streaming.StallTimeout` (the ready-made bot shows its "took too long" and
"stopped responding" notes for them). Before any text
reached the caller, a request that failed with 408, 409, 429 or 5xx, could not connect, or
lost its connection, is retried up to ``max_retries`` times, after the server's
``Retry-After`` (seconds or an HTTP date, at most :data:`MAX_RETRY_WAIT` s; also
``retry-after-ms``) or else an exponential back-off (0.5 s doubling up to 8 s, with jitter);
a retry that could not start before the first-token deadline is not made. Once text reached
the caller, nothing is retried, since a retry would repeat text. A connect timeout is not
retried either. A caller that goes away closes its HTTP response at once (the worker checks
every :data:`WATCH_INTERVAL` s, and at every event), which stops the generation on servers that
watch the connection (vLLM, llama.cpp's server and most others do).

Failures reach the caller as :class:`genbot.StreamError` carrying one of the errors below,
which say what failed, the URL, the HTTP status and the server's own error message. They are
named like the official ``openai`` client's errors (:class:`APIConnectionError`,
:class:`AuthenticationError`, :class:`RateLimitError`, ...), all :class:`ModelError`.

The API key comes from ``api_key=``, else ``GENBOT_API_KEY``, else ``OPENAI_API_KEY``; with
none, no ``Authorization`` header is sent (local servers need none). The OpenAI API has no
repetition penalty, so ``GenerationSettings.repeat_penalty`` is not sent; pass
server-specific parameters (e.g. ``{"repeat_penalty": 1.1}`` for llama.cpp,
``{"repetition_penalty": 1.1}`` for vLLM) as ``extra_body``.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timezone
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import aiohttp.helpers
from yarl import URL

from genbot.models.base import (
    ChatMessage,
    ChatRequest,
    ChatStreamer,
    ModelError,
    Reasoning,
    ToolCall,
    estimate_tokens,
    prepare_messages,
)

if TYPE_CHECKING:
    from genbot.streaming.worker import Stream

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "EventReader",
    "InternalServerError",
    "NotFoundError",
    "OpenAIStreamer",
    "PermissionDeniedError",
    "RateLimitError",
    "ToolCallParts",
    "UnprocessableEntityError",
    "api_key_from_env",
    "decode_events",
    "image_parts",
    "parse_retry_after",
    "quick_text",
    "read_chunk",
    "reasoning_text",
    "server_message",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between the worker's checks of its requests: callers gone, timeouts.
WATCH_INTERVAL = 0.025
#: Statuses that are retried (before the first token), besides every 5xx.
RETRY_STATUSES = frozenset({408, 409, 429})
#: First back-off in seconds (doubled per retry, up to :data:`MAX_BACKOFF`), when the server
#: sends no ``Retry-After``.
BACKOFF = 0.5
MAX_BACKOFF = 8.0
#: The longest wait a ``Retry-After`` gets.
MAX_RETRY_WAIT = 30.0
#: How much of an error response's body is read for its message.
ERROR_BODY_LIMIT = 64 * 1024
#: Seconds to read a response to its end after ``[DONE]`` (so its connection can be reused).
DRAIN_TIMEOUT = 1.0
DEFAULT_BASE_URL = "https://api.openai.com/v1"


def api_key_from_env() -> str | None:
    """``GENBOT_API_KEY``, else ``OPENAI_API_KEY``, else ``None``."""
    return os.environ.get("GENBOT_API_KEY") or os.environ.get("OPENAI_API_KEY") or None


# -- errors ------------------------------------------------------------------------------------


class APIError(ModelError):
    """A request to the model server failed. ``url`` is what was asked; ``retryable`` says
    whether the same request may succeed when tried again (before any text was shown)."""

    retryable = False

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class APIConnectionError(APIError):
    """No connection to the server, or the connection broke before the reply was complete."""

    retryable = True


class APITimeoutError(APIError):
    """Connecting, the first token or the next token took longer than its timeout. ``kind``
    says which for the tokens (``"first_token"``, ``"stall"``: the caller then sees
    :class:`genbot.streaming.FirstTokenTimeout` or :class:`~genbot.streaming.StallTimeout`),
    else ``None``."""

    def __init__(self, message: str, *, url: str, kind: str | None = None) -> None:
        super().__init__(message, url=url)
        self.kind = kind


def _kind(error: APIError) -> str | None:
    """The failure kind a stream that failed with ``error`` gets (see :class:`APITimeoutError`)."""
    return error.kind if isinstance(error, APITimeoutError) else None


class APIStatusError(APIError):
    """The server answered with an error status. ``status``, ``server_message`` (the server's
    own explanation) and ``retry_after`` (seconds it asked to wait, or ``None``)."""

    def __init__(
        self,
        what: str,
        url: str,
        status: int,
        reason: str,
        server_message: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{what} {url} answered {status} {reason}: {server_message}", url=url)
        self.status = status
        self.server_message = server_message
        self.retry_after = retry_after
        self.retryable = status in RETRY_STATUSES or status >= 500


class BadRequestError(APIStatusError):
    """400: the server refused the request (e.g. a prompt longer than the model's context)."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing or wrong."""


class PermissionDeniedError(APIStatusError):
    """403: the API key may not use this model or endpoint."""


class NotFoundError(APIStatusError):
    """404: no such model, or ``base_url`` is not the server's ``/v1`` address."""


class ConflictError(APIStatusError):
    """409."""


class UnprocessableEntityError(APIStatusError):
    """422: the server could not use the request's parameters."""


class RateLimitError(APIStatusError):
    """429: too many requests (or the server's queue is full)."""


class InternalServerError(APIStatusError):
    """5xx: the server (or a load balancer before it) failed."""


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error(
    what: str, url: str, status: int, reason: str, body: bytes, headers: Mapping[str, str]
) -> APIStatusError:
    """The error for an error response (``what`` is e.g. ``"POST"``)."""
    kind = _STATUS_ERRORS.get(status, InternalServerError if status >= 500 else APIStatusError)
    wait = parse_retry_after(headers.get("retry-after-ms"), milliseconds=True)
    if wait is None:
        wait = parse_retry_after(headers.get("retry-after"))
    return kind(what, url, status, reason, server_message(body), wait)


def server_message(body: bytes, limit: int = 500) -> str:
    """The explanation in an error response's body: OpenAI's ``{"error": {"message": ...}}``,
    ``{"error": "..."}``, ``{"message": ...}``, ``{"detail": ...}``, else the text itself, at
    most ``limit`` characters."""
    text = body.decode("utf-8", "replace").strip()
    try:
        found = _message_in(json.loads(text))
    except ValueError:
        found = None
    text = found or text or "(no message)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _message_in(parsed: object) -> str | None:
    if not isinstance(parsed, dict):
        return None
    for key in ("error", "message", "detail"):
        value = parsed.get(key)
        if isinstance(value, dict):
            value = value.get("message")
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def parse_retry_after(
    value: str | None, *, milliseconds: bool = False, now: float | None = None
) -> float | None:
    """The seconds a ``Retry-After`` header asks to wait, or ``None`` (missing, unreadable).

    Parameters
    ----------
    value
        A number of seconds (of milliseconds with ``milliseconds``, as ``retry-after-ms``) or
        an HTTP date, which counts from ``now`` (``time.time()`` by default); a past date is 0.
    """
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value) / (1000 if milliseconds else 1)
    except ValueError:
        if milliseconds:
            return None
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def backoff(attempt: int) -> float:
    """Seconds before retry number ``attempt`` (0 for the first) without ``Retry-After``."""
    return float(min(MAX_BACKOFF, BACKOFF * 2**attempt) * random.uniform(0.75, 1.0))


#: aiohttp's errors -> ours, the first match wins (a connect timeout is also an OSError).
_CLIENT_ERRORS: tuple[tuple[type[BaseException], type[APIError], str], ...] = (
    (aiohttp.ConnectionTimeoutError, APITimeoutError, "could not connect in time"),
    (aiohttp.ClientConnectorCertificateError, APIError, "refused the server's certificate"),
    (aiohttp.ClientConnectorError, APIConnectionError, "cannot connect"),
    (aiohttp.ClientPayloadError, APIConnectionError, "the connection broke"),
    (aiohttp.ClientConnectionError, APIConnectionError, "the connection broke"),
    (aiohttp.ClientError, APIError, "the request failed"),
)


def client_error(what: str, url: str, error: BaseException) -> APIError:
    """Our error for an aiohttp error (or ``OSError``) raised by request ``what`` to ``url``."""
    ours, says = next(
        ((kind, says) for raised, kind, says in _CLIENT_ERRORS if isinstance(error, raised)),
        (APIConnectionError, "the connection broke"),
    )
    detail = str(error) or type(error).__name__
    return ours(f"{what} {url}: {says} ({detail})", url=url)


# -- server-sent events ------------------------------------------------------------------------


class EventReader:
    """Splits a server-sent event stream into the ``data`` of its events, chunk by chunk.

    As the SSE format says: lines end with LF, CRLF or CR; an empty line ends an event; an
    event's ``data`` lines are joined with LF (one space after ``data:`` is dropped);
    comments (``: ping``) and other fields (``event``, ``id``, ``retry``) are skipped, as are
    events without data.
    """

    __slots__ = ("_after_cr", "_rest")

    def __init__(self) -> None:
        self._rest = b""
        self._after_cr = False  # the last chunk ended with CR: a LF first in this one goes with it

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of the events that ``chunk`` completes."""
        if self._after_cr:
            self._after_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buffer = self._rest + chunk if self._rest else chunk
        if b"\r" in buffer:
            self._after_cr = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        blocks = buffer.split(b"\n\n")
        self._rest = blocks.pop()
        out = []
        for block in blocks:
            if block[:6] == b"data: " and b"\n" not in block:  # the usual event: one data line
                out.append(block[6:])
            else:
                out.extend(_block_data(block))
        return out


def _block_data(block: bytes) -> list[bytes]:
    """The data of the events in ``block`` (lines without their ends; empty lines end events)."""
    events: list[bytes] = []
    data: list[bytes] | None = None
    for line in block.split(b"\n"):
        if not line:
            if data is not None:
                events.append(b"\n".join(data))
            data = None
            continue
        name, colon, value = line.partition(b":")
        if name != b"data":
            continue  # a comment (empty name) or another field
        if colon and value[:1] == b" ":
            value = value[1:]
        data = [*(data or []), value]
    if data is not None:
        events.append(b"\n".join(data))
    return events


def quick_text(data: bytes) -> str | None:
    """The text of the usual token event, found without decoding its JSON; ``None`` when the
    event is not plainly one (then :func:`read_chunk` decodes it).

    Plainly one: compact JSON with one ``"delta":{"content":"`` (the text is the delta's
    first key, as vLLM, llama.cpp's server and OpenAI send it), one ``"finish_reason"``, which
    is ``null``, and no backslash anywhere (so the text ends at the next quote and needs no
    unescaping). A few byte searches instead of a JSON decoding: about a third of the cost.
    """
    key = data.find(b'"delta":{"content":"')
    if key < 0 or b"\\" in data or data.find(b'"delta"', key + 20) >= 0:
        return None
    finish = data.find(b'"finish_reason":null')
    if finish < 0 or data.find(b'"finish_reason"', finish + 20) >= 0:
        return None
    if data.find(b'"finish_reason"', 0, finish) >= 0:
        return None
    start = key + 20
    return data[start : data.find(b'"', start)].decode()


def read_chunk(data: bytes) -> tuple[str | None, str | None]:
    """The text (``choices[0].delta.content``) and ``finish_reason`` of one streamed
    chat-completion chunk; ``(None, None)`` for chunks without a choice (e.g. usage).

    Raises
    ------
    APIError
        The event is not a JSON object, or it is an error the server sent mid-stream.
    """
    text = quick_text(data)
    if text is not None:
        return text, None
    try:
        event = json.loads(data)
    except ValueError:
        raise ModelError(f"the server sent an event that is not JSON: {data[:200]!r}") from None
    try:
        choice = event["choices"][0]
        content = choice["delta"].get("content")
        finish = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        return _odd_chunk(event, data)
    if content is not None and type(content) is not str:
        content = None
    return content, finish if type(finish) is str else None


def _odd_chunk(event: Any, data: bytes) -> tuple[str | None, str | None]:
    """An event off the usual shape: an error, a chunk without choices or delta, or junk."""
    if not isinstance(event, dict):
        raise ModelError(f"the server sent an event that is not a JSON object: {data[:200]!r}")
    if "error" in event:
        raise ModelError(f"the server sent an error: {_message_in(event) or repr(data[:500])}")
    choices = event.get("choices")
    if not choices:
        return None, None  # e.g. the usage chunk
    choice = choices[0] if isinstance(choices, list) and isinstance(choices[0], dict) else {}
    finish = choice.get("finish_reason")
    return None, finish if isinstance(finish, str) else None


def decode_events(
    reader: EventReader,
    chunk: bytes,
    tool_calls: ToolCallParts | None = None,
    reasoning: list[str] | None = None,
) -> tuple[int, str, bool, bool]:
    """What one chunk of the response says: how many events it completes, their text, and
    whether a ``finish_reason`` came and whether ``[DONE]`` came (then the rest is ignored).
    The ``tool_calls`` fragments of events without text go to ``tool_calls``, if given; the
    events' reasoning (:func:`reasoning_text`) is appended to ``reasoning`` if given.

    Raises
    ------
    ModelError
        An event that :func:`read_chunk` refuses.
    """
    events = reader.feed(chunk)
    texts: list[str] = []
    finished = False
    for data in events:
        if data == b"[DONE]":
            return len(events), "".join(texts), finished, True
        if reasoning is not None and _has_reasoning(data):
            reasoning.append(reasoning_text(data))
        text, finish = read_chunk(data)
        if text:
            texts.append(text)
        elif tool_calls is not None and b'"tool_calls"' in data:
            tool_calls.feed(data)
        if finish is not None:
            finished = True
    return len(events), texts[0] if len(texts) == 1 else "".join(texts), finished, False


# -- tool calls (issue 11) ---------------------------------------------------------------------


class ToolCallParts:
    """The tool calls of one reply, put together from its streamed ``tool_calls`` deltas as
    OpenAI and vLLM send them: fragments keyed by ``index``, the first with the call's ``id``
    and ``function.name``, the ``function.arguments`` text split across many, the calls
    possibly interleaved. A fragment without ``index`` is the call at its position (servers
    that send whole calls at once); a call without ``id`` gets ``call_<index>``."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, tuple[list[str], list[str]]] = {}  # index -> [id, name], args

    def feed(self, data: bytes) -> None:
        """Take the ``tool_calls`` of one event (the JSON ``data`` of a chunk)."""
        try:
            self.add(json.loads(data)["choices"][0]["delta"].get("tool_calls"))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return  # read_chunk has judged the event already

    def add(self, deltas: object) -> None:
        """Take a list of tool-call deltas (or of whole calls)."""
        if not isinstance(deltas, list):
            return
        for position, delta in enumerate(deltas):
            if not isinstance(delta, dict):
                continue
            index = delta.get("index")
            key = index if isinstance(index, int) else position
            names, arguments = self._calls.setdefault(key, (["", ""], []))
            function = delta.get("function")
            function = function if isinstance(function, dict) else {}
            for slot, value in enumerate((delta.get("id"), function.get("name"))):
                if isinstance(value, str) and value and not names[slot]:
                    names[slot] = value
            more = function.get("arguments")
            if isinstance(more, dict):  # a server that sends the arguments as an object
                more = json.dumps(more)
            if isinstance(more, str):
                arguments.append(more)

    def calls(self) -> list[ToolCall]:
        """The calls so far, by index."""
        return [
            ToolCall(names[0] or f"call_{key}", names[1], "".join(arguments))
            for key, (names, arguments) in sorted(self._calls.items())
        ]

    def __bool__(self) -> bool:
        return bool(self._calls)


def _write_calls(call: _Call) -> None:
    """Write the reply's tool calls to the caller (once), before its stream closes."""
    parts = call.tools
    if parts:
        call.tools = None
        for found in parts.calls():
            call.stream.write(found)
        call.wrote = True


def _openai_message(message: ChatMessage) -> dict[str, Any]:
    """A prepared message as the OpenAI API takes it: an assistant message's tool calls as
    ``{"id", "type": "function", "function": {"name", "arguments"}}``."""
    out: dict[str, Any] = dict(message)
    calls = message.get("tool_calls")
    if calls:
        out["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"]},
            }
            for c in calls
        ]
    return out


def _add_tools(body: dict[str, Any], request: ChatRequest) -> None:
    """The tools of ``request`` and its messages' tool calls, in the request ``body``."""
    if request.tools:
        body["tools"] = request.tools
    messages: list[ChatMessage] = body["messages"]
    if any("tool_calls" in m for m in messages):
        body["messages"] = [_openai_message(m) for m in messages]


def image_parts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as the API takes them: one with ``images`` gets content parts, its text
    then each image as an ``image_url`` part with a ``data:`` URL (base64)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        sent: dict[str, Any] = dict(message)
        images = sent.pop("images", None)
        if images:
            sent["content"] = [{"type": "text", "text": message["content"]}] + [
                {"type": "image_url", "image_url": {"url": _data_url(im["mime"], im["data"])}}
                for im in images
            ]
        out.append(sent)
    return out


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _env_proxy(url: str) -> dict[str, Any]:
    """The proxy the environment names for ``url`` (``HTTP_PROXY``, ``HTTPS_PROXY``,
    ``NO_PROXY``, as aiohttp's ``trust_env`` reads them), as keyword arguments of a request:
    ``{"proxy": ..., "proxy_auth": ...}``, or ``{}`` for none."""
    try:
        proxy, auth = aiohttp.helpers.get_env_proxy_for_url(URL(url))
    except LookupError:
        return {}
    return {"proxy": proxy, "proxy_auth": auth}


def _has_reasoning(data: bytes) -> bool:
    """Whether an event may carry reasoning: a ``"reasoning…"`` key whose value is not
    ``null`` (some servers send ``"reasoning_content": null`` in every event; parsing each
    of those again would double the CPU per token)."""
    at = data.find(b'"reasoning')
    while at >= 0:
        colon = data.find(b":", at)
        if colon < 0:
            return False
        if not data[colon + 1 : colon + 12].lstrip().startswith(b"null"):
            return True
        at = data.find(b'"reasoning', colon)
    return False


def reasoning_text(data: bytes) -> str:
    """The reasoning in one streamed chunk: ``choices[0].delta.reasoning_content`` (vLLM,
    llama.cpp's server, DeepSeek) or ``.reasoning`` (Ollama, OpenRouter); ``""`` if none or
    if the event is not readable (:func:`read_chunk` says why)."""
    try:
        delta = json.loads(data)["choices"][0]["delta"]
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
    if not isinstance(delta, dict):
        return ""
    for key in ("reasoning_content", "reasoning"):
        text = delta.get(key)
        if isinstance(text, str) and text:
            return text
    return ""


# -- the backend -------------------------------------------------------------------------------


class _Call:
    """One stream being served: its request's state, as the watchdog sees it."""

    __slots__ = (
        "attempts",
        "deadline",
        "expired",
        "finished",
        "progress",
        "seen",
        "seen_at",
        "stream",
        "streaming",
        "task",
        "tools",
        "wrote",
    )

    def __init__(self, stream: Stream, deadline: float) -> None:
        self.stream = stream
        self.task: asyncio.Task[None] | None = None
        self.deadline = deadline  # for the first event
        self.streaming = False  # the first event came
        self.progress = 0  # chunks with events so far
        self.seen = 0  # ``progress`` as the watchdog last saw it,
        self.seen_at = 0.0  # and when it saw it change
        self.wrote = False  # text reached the caller
        self.finished = False  # the reply is complete and the caller's stream closed
        self.attempts = 0
        self.expired: APIError | None = None  # why the watchdog ended it
        self.tools: ToolCallParts | None = None  # the tool calls streamed, if tools were sent

    def overdue(self, now: float, token_timeout: float) -> str | None:
        """Why this request must end now (a timeout, said as such), or ``None``."""
        if not self.streaming:
            return "no first token" if now >= self.deadline else None
        if self.progress != self.seen:
            self.seen, self.seen_at = self.progress, now
            return None
        return "no next token" if now - self.seen_at >= token_timeout else None


class OpenAIStreamer(ChatStreamer):
    """A chat model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    ``base_url`` defaults to ``OPENAI_BASE_URL`` or OpenAI's API; ``model=None`` uses the
    first model the server lists (handy for single-model local servers). ``system_prompt``
    (default none, as every backend) is put first when a request has no system message. See
    the module docstring for the timeouts, retries and errors.

    Parameters
    ----------
    base_url, model, api_key, system_prompt, extra_body
        Where, which model, the key, and what more to send (see the module docstring).
    max_concurrency
        Requests in flight at most.
    connect_timeout, first_token_timeout, token_timeout
        Seconds to connect, to the first event of a reply (retries included), and between two
        events of a reply.
    max_retries
        Retries of a request at most (before its first token).

    Raises
    ------
    ValueError
        ``max_concurrency`` is less than 1, ``max_retries`` negative, or a timeout not positive.
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        *,
        api_key: str | None = None,
        max_concurrency: int = 16,
        connect_timeout: float = 10.0,
        first_token_timeout: float = 60.0,
        token_timeout: float = 30.0,
        max_retries: int = 3,
        system_prompt: str | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must not be negative, not {max_retries}")
        timeouts = {
            "connect_timeout": connect_timeout,
            "first_token_timeout": first_token_timeout,
            "token_timeout": token_timeout,
        }
        for name, value in timeouts.items():
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value}")
        self.base_url = base_url
        self.model = model
        self.api_key = api_key
        self.max_concurrency = max_concurrency
        self._proxy: dict[str, Any] = {}  # request arguments: the proxy (see _session)
        self.connect_timeout = connect_timeout
        self.first_token_timeout = first_token_timeout
        self.token_timeout = token_timeout
        self.max_retries = max_retries
        self.system_prompt = system_prompt
        self.extra_body = dict(extra_body or {})

    # -- the worker's loop ----------------------------------------------------------------------

    def worker(self) -> None:
        asyncio.run(self._serve())

    def _root(self) -> str:
        return (self.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")

    def _session(self) -> aiohttp.ClientSession:
        key = self.api_key or api_key_from_env()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # HTTP_PROXY / HTTPS_PROXY / NO_PROXY, as curl and the openai SDK: read once here and
        # passed to each request. (aiohttp's trust_env reads them, and ~/.netrc, on two
        # executor threads per request: about 1 ms more to every first token.)
        self._proxy = _env_proxy(self._root())
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),  # the worker bounds its requests itself
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout),
        )

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        calls: dict[asyncio.Task[None], _Call] = {}
        changed = asyncio.Event()  # a call ended, or the first one of a while began

        def done(task: asyncio.Task[None]) -> None:
            calls.pop(task, None)
            changed.set()

        async with self._session() as session:
            model = self.model or await self._first_model(session)
            url = f"{self._root()}/chat/completions"
            watchdog = loop.create_task(self._watch(calls, changed))
            try:
                while True:
                    while len(calls) >= self.max_concurrency:
                        changed.clear()
                        await changed.wait()
                    free = self.max_concurrency - len(calls)
                    # consume() blocks: run it off the loop so the requests keep streaming
                    for stream in await loop.run_in_executor(None, self.consume, 1, free):
                        call = _Call(stream, loop.time() + self.first_token_timeout)
                        call.task = loop.create_task(self._complete(session, url, model, call))
                        calls[call.task] = call
                        call.task.add_done_callback(done)
                        changed.set()
            finally:
                watchdog.cancel()
                for task in list(calls):
                    task.cancel()
                await asyncio.gather(watchdog, *calls, return_exceptions=True)

    async def _watch(self, calls: dict[asyncio.Task[None], _Call], changed: asyncio.Event) -> None:
        """End the requests whose caller went away or that timed out, every WATCH_INTERVAL."""
        loop = asyncio.get_running_loop()
        while True:
            if not calls:
                changed.clear()
                await changed.wait()  # nothing to watch: no wake-ups in an idle worker
            await asyncio.sleep(WATCH_INTERVAL)
            now = loop.time()
            for task, call in list(calls.items()):
                if call.stream.closed and not call.finished:
                    task.cancel()  # the caller went away: closing the response stops the server
                    continue
                why = call.overdue(now, self.token_timeout)
                if why is not None:
                    call.expired = self._timeout(why, call)
                    task.cancel()

    def _timeout(self, why: str, call: _Call) -> APITimeoutError:
        limit = self.token_timeout if call.streaming else self.first_token_timeout
        name = "token_timeout" if call.streaming else "first_token_timeout"
        tries = f"; {call.attempts} attempts" if call.attempts > 1 else ""
        return APITimeoutError(
            f"POST {self._root()}/chat/completions: {why} within {limit:g} s ({name}{tries})",
            url=f"{self._root()}/chat/completions",
            kind="stall" if call.streaming else "first_token",
        )

    # -- one stream -----------------------------------------------------------------------------

    async def _complete(
        self, session: aiohttp.ClientSession, url: str, model: str, call: _Call
    ) -> None:
        stream = call.stream
        try:
            body = json.dumps(self._body(model, stream.data)).encode()
            await self._retrying(
                "POST",
                url,
                lambda: self._attempt(session, url, body, call),
                call,
                lambda: call.wrote,
            )
        except asyncio.CancelledError:
            if call.expired is None:
                raise  # the caller went away, or the worker stops
            stream.fail(f"{type(call.expired).__name__}: {call.expired}", kind=_kind(call.expired))
        except APIError as exc:  # explained by its message: no traceback
            stream.fail(f"{type(exc).__name__}: {exc}", kind=_kind(exc))
        except Exception as exc:
            stream.fail(exc)
        else:
            stream.close()

    def _body(self, model: str, request: object) -> dict[str, Any]:
        if not isinstance(request, ChatRequest):
            raise ModelError(f"expected a ChatRequest, got {type(request).__name__}")
        s = request.settings
        body: dict[str, Any] = {
            "model": model,
            "messages": image_parts(
                prepare_messages(request.messages, self.system_prompt, images=True)
            ),
            "stream": True,
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
        }
        if s.stop:  # unset ones are left out, not sent as null
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        _add_tools(body, request)
        body.update(self.extra_body)
        return body

    async def _retrying(
        self,
        what: str,
        url: str,
        attempt: Callable[[], Awaitable[T]],
        call: _Call | None,
        shown: Callable[[], bool],
    ) -> T:
        """``attempt()``, retried as the module docstring says while ``shown()`` is false."""
        loop = asyncio.get_running_loop()
        deadline = call.deadline if call else loop.time() + self.first_token_timeout
        retries = 0
        while True:
            try:
                return await attempt()
            except APIError as error:
                wait = self._retry_wait(error, retries, shown())
                if wait is None or loop.time() + wait >= deadline:
                    if retries:
                        error.args = (f"{error.args[0]} ({retries + 1} attempts)",)
                    raise
                _log.info("%s %s failed (%s); retrying in %.2f s", what, url, error, wait)
            retries += 1
            await asyncio.sleep(wait)

    def _retry_wait(self, error: APIError, retries: int, shown: bool) -> float | None:
        """Seconds to wait before retrying after ``error``, or ``None``: no retry."""
        if shown or not error.retryable or retries >= self.max_retries:
            return None
        asked = error.retry_after if isinstance(error, APIStatusError) else None
        return backoff(retries) if asked is None else min(asked, MAX_RETRY_WAIT)

    async def _attempt(
        self, session: aiohttp.ClientSession, url: str, body: bytes, call: _Call
    ) -> None:
        call.attempts += 1
        call.streaming = False  # a retry waits for its first token again, by the same deadline
        data = call.stream.data
        call.tools = ToolCallParts() if isinstance(data, ChatRequest) and data.tools else None
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        try:
            async with session.post(url, data=body, headers=headers, **self._proxy) as response:
                if response.status != 200:
                    raise await _error_response("POST", url, response)
                if response.content_type == "application/json":  # a server that did not stream
                    self._write_whole(await response.read(), call)
                else:
                    await self._relay(response, call, url)
        except (aiohttp.ClientError, OSError) as exc:
            raise client_error("POST", url, exc) from exc
        except APIError:
            raise
        except ModelError as exc:  # what the server sent makes no sense
            raise APIError(f"POST {url}: {exc}", url=url) from exc

    async def _relay(self, response: aiohttp.ClientResponse, call: _Call, url: str) -> None:
        """Write the reply's text to the caller as it streams in."""
        stream, content, reader = call.stream, response.content, EventReader()
        finished = done = False
        reasoning: list[str] = []  # what the events of a chunk thought
        try:
            while not done:
                chunk = await content.readany()
                if not chunk:
                    break
                events, text, finish, done = decode_events(reader, chunk, call.tools, reasoning)
                if not events:
                    continue  # comments (keep-alive pings) only
                call.streaming = True
                call.progress += 1
                _relay_reasoning(reasoning, call)
                if text:
                    if stream.closed:
                        return  # the caller went away: the finally closes the response
                    stream.write(text)
                    call.wrote = True
                if finish:
                    finished = True
                    _write_calls(call)
                    call.finished = True
                    stream.close()  # the reply is complete: the caller need not wait for more
        finally:
            if not done:
                response.close()  # the server stops generating
        if not (done or finished):
            raise APIConnectionError(
                f"POST {url}: the stream ended before the reply was complete", url=url
            )
        _write_calls(call)
        call.finished = True
        stream.close()
        if done:
            await _drain(response)

    def _write_whole(self, body: bytes, call: _Call) -> None:
        self._write_whole_reasoning(body, call)
        try:
            message = json.loads(body)["choices"][0]["message"]
            text = message["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ModelError(
                f"the server sent a reply that is not a chat completion: {body[:200]!r}"
            ) from None
        call.streaming = True
        if isinstance(text, str) and text:
            call.stream.write(text)
            call.wrote = True
        if call.tools is not None:
            call.tools.add(message.get("tool_calls"))
            _write_calls(call)

    @staticmethod
    def _write_whole_reasoning(body: bytes, call: _Call) -> None:
        """The reasoning of a reply that did not stream (``message.reasoning_content``)."""
        try:
            message = json.loads(body)["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            return  # _write_whole says why
        text = message.get("reasoning_content") if isinstance(message, dict) else None
        if isinstance(text, str) and text:
            call.stream.write(Reasoning(text))
            call.wrote = True

    # -- the model's name -----------------------------------------------------------------------

    async def _first_model(self, session: aiohttp.ClientSession) -> str:
        url = f"{self._root()}/models"

        async def attempt() -> str:
            try:
                async with session.get(url, **self._proxy) as response:
                    if response.status != 200:
                        raise await _error_response("GET", url, response)
                    listed = await response.json(content_type=None)
            except (aiohttp.ClientError, OSError) as exc:
                raise client_error("GET", url, exc) from exc
            except ValueError:
                raise ModelError(f"GET {url}: the answer is not JSON") from None
            return _first_id(listed, url)

        return await self._retrying("GET", url, attempt, None, lambda: False)

    # -- token counting (context budgets in tokens) -----------------------------------------

    async def count_texts(self, texts: list[str]) -> list[int]:
        """Tokens of each text: the server's own tokenizer where it has a ``/tokenize``
        endpoint (vLLM's and llama.cpp's servers do), else the documented estimate, one token
        per four characters (:func:`genbot.models.base.estimate_tokens`; OpenAI's API has no
        tokenizer endpoint). A server without one is not asked again.

        Parameters
        ----------
        texts:
            Plain texts (no chat template, no special tokens).
        """
        if not self.__dict__.get("_no_tokenize"):
            try:
                return await _server_counts(self, texts)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, LookupError) as error:
                _log.info("%s has no usable /tokenize (%r); estimating", self._root(), error)
                self.__dict__["_no_tokenize"] = True
            except (TypeError, ValueError) as error:
                _log.info("%s: an odd /tokenize answer (%r); estimating", self._root(), error)
                self.__dict__["_no_tokenize"] = True
        return [estimate_tokens(text) for text in texts]


def _relay_reasoning(reasoning: list[str], call: _Call) -> None:
    """Write the reasoning a chunk's events carried as one :class:`Reasoning` item (never
    text); dropped when the caller has gone away (the watchdog then ends the request)."""
    thought = "".join(reasoning)
    reasoning.clear()
    if thought and not call.stream.closed:
        call.stream.write(Reasoning(thought))
        call.wrote = True  # a retry would repeat it


def _first_id(listed: object, url: str) -> str:
    data = listed.get("data") if isinstance(listed, dict) else None
    for entry in data if isinstance(data, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            return str(entry["id"])
    raise ModelError(f"the server lists no model at {url}; pass model=")


async def _error_response(what: str, url: str, response: aiohttp.ClientResponse) -> APIStatusError:
    body = await response.content.read(ERROR_BODY_LIMIT)
    return status_error(what, url, response.status, response.reason or "", body, response.headers)


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read what follows ``[DONE]`` (the end of the body), so the connection is reused."""
    try:
        await asyncio.wait_for(response.content.read(), DRAIN_TIMEOUT)
    except (asyncio.TimeoutError, aiohttp.ClientError):
        response.close()


async def _server_counts(streamer: OpenAIStreamer, texts: list[str]) -> list[int]:
    """Token counts from the server's ``/tokenize`` (at its root, beside ``/v1``)."""
    root = streamer._root()
    url = root.removesuffix("/v1") + "/tokenize"
    key = streamer.api_key or api_key_from_env()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = aiohttp.ClientTimeout(total=10.0, connect=streamer.connect_timeout)
    connector = aiohttp.TCPConnector(limit=8)  # a few requests at a time
    async with aiohttp.ClientSession(
        headers=headers, timeout=timeout, connector=connector
    ) as session:

        async def count(text: str) -> int:
            # vLLM reads "prompt" (and "model"), llama.cpp's server "content"
            body: dict[str, Any] = {"model": streamer.model, "prompt": text, "content": text}
            body["add_special_tokens"] = body["add_special"] = False
            async with session.post(url, json=body) as response:
                response.raise_for_status()
                answer = await response.json()
            number = answer.get("count")
            return int(number) if number is not None else len(answer["tokens"])

        return list(await asyncio.gather(*(count(text) for text in texts)))
