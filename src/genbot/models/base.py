"""What every backend shares: the chat input, message preparation and stop-string handling.

The system prompt policy, the same for every backend: a backend never adds a system prompt of
its own. The messages of a :class:`ChatRequest` are what the model's chat template gets (named
user messages prefixed with the name, see :func:`prepare_messages`); a backend's
``system_prompt=`` argument, ``None`` by default, is put first only when given and when the
conversation has no system message. The ready-made bot's default system prompt is a setting
(:data:`genbot.settings.DEFAULT_SYSTEM_PROMPT`), put into the messages by the bot.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from genbot.streaming import Streamer

if TYPE_CHECKING:
    from genbot.streaming.worker import Stream

__all__ = [
    "ROLES",
    "ChatMessage",
    "ChatRequest",
    "ChatStreamer",
    "GenerationSettings",
    "ImagePart",
    "ModelError",
    "Reasoning",
    "Role",
    "StopBuffer",
    "ToolCall",
    "ToolCallDict",
    "prepare_messages",
]

_log = logging.getLogger(__name__)

#: Who wrote a chat message (``tool``: the result of a tool call, see :class:`ToolCall`).
Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant", "tool")


class ToolCallDict(TypedDict):
    """A tool call as an assistant message carries it (``ChatMessage["tool_calls"]``)."""

    id: str
    name: str
    arguments: str  # JSON text of an object, as the model wrote it


@dataclass(frozen=True)
class ToolCall:
    """A backend's request to call a tool, yielded by a chat stream after its text deltas.

    ``arguments`` is the JSON text the model wrote (not yet checked: the tool loop validates
    it against the tool's schema). ``id`` pairs the call with its result message
    (``{"role": "tool", "tool_call_id": id, "content": ...}``).
    """

    id: str
    name: str
    arguments: str

    def as_dict(self) -> ToolCallDict:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass(frozen=True)
class Reasoning:
    """Text a reasoning model "thinks" before answering (an OpenAI-compatible server's
    ``reasoning_content``), yielded by a chat stream in place of a text delta. Never part of
    the answer."""

    text: str


class ImagePart(TypedDict):
    """An image a chat message carries (``ChatMessage["images"]``): its file name, MIME type
    (``image/png``, ...) and bytes."""

    name: str
    mime: str
    data: bytes


class _ChatMessageRequired(TypedDict):
    role: Role
    content: str


class ChatMessage(_ChatMessageRequired, total=False):
    """One message of a chat: ``{"role": ..., "content": ..., "name"?: ...}``.

    ``name`` (optional) is who wrote a user message; :func:`prepare_messages` turns it into a
    ``"name: "`` prefix, since most chat templates drop the field.
    """

    name: str
    tool_calls: list[ToolCallDict]  # an assistant message that called tools
    tool_call_id: str  # a tool message: the call it answers
    images: list[ImagePart]  # a user message's images, for models that can see


class ModelError(RuntimeError):
    """A backend failed to generate (bad request, server error, engine failure).

    Raised inside the worker; the caller sees it as a :class:`genbot.StreamError`.
    """


@dataclass
class GenerationSettings:
    """How to generate. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.2
    top_p: float = 0.9
    repeat_penalty: float = 1.1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must not be negative, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.repeat_penalty <= 0:
            raise ValueError(f"repeat_penalty must be positive, not {self.repeat_penalty}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings, not {self.stop!r}")


@dataclass
class ChatRequest:
    """One chat turn to complete: the conversation so far (oldest first) and the settings.

    Messages are :class:`ChatMessage` dicts: ``{"role": "system" | "user" | "assistant",
    "name"?: str, "content": str}``.
    """

    messages: list[ChatMessage]
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    #: Tools the model may call, as OpenAI ``{"type": "function", "function": {...}}`` schemas;
    #: empty: no tools (the stream then yields text only).
    tools: list[dict[str, Any]] = field(default_factory=list)


def prepare_messages(
    messages: Sequence[ChatMessage], system_prompt: str | None = None, *, images: bool = False
) -> list[ChatMessage]:
    """Turn request messages into plain ``{role, content}`` messages for a chat template.

    Chat templates (and many servers) drop the ``name`` field, yet in a group chat who said
    what matters, so a named user message becomes ``"name: content"``. ``system_prompt``, if
    given (not ``None`` or empty), is put first when the conversation has no system message of
    its own; nothing else is added.

    Parameters
    ----------
    messages
        The conversation, oldest first. They come from the caller's process unchecked, so
        they are checked here.
    system_prompt
        The backend's own system prompt, if it was given one.
    images
        The backend can see: a message's ``images`` are kept (checked). Otherwise they are
        dropped, and each image the content does not name yet is named in it
        (``[image: name]``).

    Raises
    ------
    ModelError
        A message is not a ``{role, content}`` dict, or there is no user or assistant message.
    """
    out: list[ChatMessage] = []
    for i, message in enumerate(messages):
        raw: object = message  # checked at run time: it may be anything
        if not isinstance(raw, dict):
            raise ModelError(f"message {i}: must be a dict, not {type(raw).__name__}")
        role, content, name = raw.get("role"), raw.get("content"), raw.get("name")
        if role not in ROLES:
            raise ModelError(f"message {i}: role must be one of {ROLES}, not {role!r}")
        if not isinstance(content, str):
            raise ModelError(f"message {i}: content must be a string, not {type(content).__name__}")
        if name and role == "user":
            content = f"{name}: {content}"
        prepared: ChatMessage = {"role": role, "content": content}
        _copy_tool_fields(i, raw, prepared)
        _copy_images(i, raw, prepared, images)
        out.append(prepared)
    if system_prompt and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": system_prompt})
    if not any(m["role"] != "system" for m in out):
        raise ModelError("a chat request needs at least one user or assistant message")
    return out


def _copy_tool_fields(i: int, raw: dict[str, object], out: ChatMessage) -> None:
    """Keep an assistant message's ``tool_calls`` and a tool message's ``tool_call_id``."""
    calls = raw.get("tool_calls")
    if calls is not None and out["role"] == "assistant":
        if not isinstance(calls, list) or not all(_is_tool_call(c) for c in calls):
            raise ModelError(f"message {i}: tool_calls must be a list of {{id, name, arguments}}")
        out["tool_calls"] = [
            {"id": c["id"], "name": c["name"], "arguments": c["arguments"]} for c in calls
        ]
    if out["role"] == "tool":
        call_id = raw.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise ModelError(f"message {i}: a tool message needs its tool_call_id")
        out["tool_call_id"] = call_id


def _copy_images(i: int, raw: dict[str, object], out: ChatMessage, keep: bool) -> None:
    """Keep a message's checked ``images`` (``keep``), or name them in its content."""
    found = raw.get("images")
    if not found:
        return
    if not isinstance(found, list) or not all(_is_image(image) for image in found):
        raise ModelError(f"message {i}: images must be a list of {{name, mime, data: bytes}}")
    if keep:
        out["images"] = [
            {"name": im["name"], "mime": im["mime"], "data": im["data"]} for im in found
        ]
        return
    labels = [f"[image: {im['name']}]" for im in found]
    missing = [label for label in labels if label not in out["content"]]
    out["content"] = "\n".join([out["content"], *missing]) if out["content"] else "\n".join(missing)


def _is_image(image: object) -> bool:
    return (
        isinstance(image, dict)
        and isinstance(image.get("name"), str)
        and isinstance(image.get("mime"), str)
        and str(image.get("mime")).startswith("image/")
        and isinstance(image.get("data"), bytes)
    )


def _is_tool_call(call: object) -> bool:
    return isinstance(call, dict) and all(
        isinstance(call.get(key), str) for key in ("id", "name", "arguments")
    )


class StopBuffer:
    """Incremental stop-string matching over streamed text.

    ``feed`` returns the text that is safe to show: text that may be the start of a stop
    string is held back until it is known not to be one. After a stop string is seen,
    ``stopped`` is true and nothing more is returned.
    """

    def __init__(self, stop: Iterable[str]) -> None:
        self.stop = [s for s in stop if s]
        self.stopped = False
        self._pending = ""

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self._pending += text
        # Text that may still become a stop starts here; a stop found after this point is
        # not the first one yet: a longer stop starting earlier may still complete.
        safe = len(self._pending) - self._held_length()
        cut = self._first_stop()
        if cut >= 0 and cut <= safe:
            return self._stop_at(cut)
        out, self._pending = self._pending[:safe], self._pending[safe:]
        return out

    def flush(self) -> str:
        """The held-back text, at the end of generation, up to the first stop in it."""
        if self.stopped:
            return ""
        cut = self._first_stop()
        if cut >= 0:
            return self._stop_at(cut)
        out, self._pending = self._pending, ""
        return out

    def _first_stop(self) -> int:
        """Where the first complete stop string in the pending text starts, or -1."""
        found = (self._pending.find(s) for s in self.stop)
        return min((i for i in found if i >= 0), default=-1)

    def _stop_at(self, cut: int) -> str:
        self.stopped = True
        out, self._pending = self._pending[:cut], ""
        return out

    def _held_length(self) -> int:
        """Length of the longest suffix of the pending text that starts some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(s[:n]):
                    best = n
                    break
        return best


class ChatStreamer(Streamer):
    """What every backend adds to :class:`genbot.Streamer`: ``chat()`` and serving one stream."""

    async def chat(self, request: ChatRequest) -> AsyncIterator[str | Reasoning | ToolCall]:
        """Open a stream, send ``request`` and yield the reply's text deltas, and the
        :class:`Reasoning` items and :class:`ToolCall` s the backend writes (a reasoning model's
        thinking; calls, after the text, when ``request.tools`` offers tools).

        Waits for a free slot first; failures raise :class:`genbot.StreamError`. Leaving the
        loop early (or cancelling the task) closes the stream, which stops its generation.
        """
        async with self.stream() as stream:
            async for delta in stream(request):
                yield delta

    @staticmethod
    def serve_stream(
        stream: Stream, generate: Callable[[ChatRequest, Callable[[str], bool]], object]
    ) -> None:
        """Serve one stream with ``generate(request, emit)``, where ``emit(delta)`` writes a
        delta and returns ``False`` once the caller has gone away. Closes the stream at the end;
        an exception fails it (the caller gets a StreamError with the traceback)."""

        def emit(delta: str) -> bool:
            if stream.closed:
                return False
            stream.write(delta)
            return True

        try:
            if not isinstance(stream.data, ChatRequest):
                raise ModelError(f"expected a ChatRequest, got {type(stream.data).__name__}")
            generate(stream.data, emit)
        except Exception as exc:
            stream.fail(exc)
        else:
            stream.close()

    # -- token counting (context budgets in tokens) -----------------------------------------

    async def count_texts(self, texts: list[str]) -> list[int]:
        """The number of tokens of each of ``texts``, with this backend's tokenizer.

        This default is the documented estimate, one token per four characters (rounded up);
        the backends override it with their tokenizer where they can reach one.

        Parameters
        ----------
        texts:
            Plain texts (no chat template is applied).
        """
        return [estimate_tokens(text) for text in texts]

    async def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """The tokens of the messages' contents (the chat template's own tokens not counted),
        as :meth:`count_texts` counts them.

        Parameters
        ----------
        messages:
            Chat messages; only their ``content`` is counted.
        """
        return sum(await self.count_texts([m["content"] for m in messages]))


def estimate_tokens(text: str) -> int:
    """The token estimate where no tokenizer is at hand: ``ceil(len(text) / 4)``."""
    return -(-len(text) // 4)
