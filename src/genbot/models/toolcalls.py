"""Tool calls in the text of open models: the formats, an incremental parser, and the fallback
prompt for chat templates that know nothing of tools.

Local backends (llama.cpp where its server does not parse the model's tool calls itself, and
transformers) get the model's reply as text; :class:`ToolCallParser` splits it into the text
the user may see and the :class:`~genbot.models.base.ToolCall` s the model asked for. It reads:

- Hermes / Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, any number of
  blocks in one reply; a block may hold a JSON list of calls (SmolLM2's format);
- Mistral: ``[TOOL_CALLS]`` followed by a JSON list of calls, to the end of the reply;
- Llama 3.x: a reply that is a bare JSON object ``{"name": ..., "parameters": {...}}`` (or a
  list of them), optionally after ``<|python_tag|>``.

A call's arguments may be called ``arguments`` or ``parameters``; they are re-serialised as
JSON text (``ToolCall.arguments``). Malformed tool-call text: a ``<tool_call>`` or
``[TOOL_CALLS]`` block that is not valid JSON but names a tool (``"name": "x"``) becomes a
:class:`ToolCall` with the raw text as its arguments, which the tool loop's validation then
rejects, so the model learns of its mistake; one that names no tool is shown as text. A bare
JSON reply that is not a call to a known tool is plain text.

While streaming, text that may be the start of a tool call is held back (as
:class:`~genbot.models.base.StopBuffer` holds back stop-string prefixes) and released once it
turns out not to be one; a reply that starts with ``{`` or ``[{"`` is held to its end.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from genbot.models.base import ChatMessage, ToolCall

__all__ = [
    "ToolCallParser",
    "fallback_messages",
    "openai_messages",
    "parse_tool_calls",
    "tool_names",
]

_log = logging.getLogger(__name__)

HERMES_OPEN = "<tool_call>"
HERMES_CLOSE = "</tool_call>"
MISTRAL = "[TOOL_CALLS]"
PYTHON_TAG = "<|python_tag|>"
_MARKERS = (HERMES_OPEN, MISTRAL, PYTHON_TAG)
_NAME = re.compile(r'"name"\s*:\s*"([^"\\]+)"')


def tool_names(tools: Iterable[dict[str, Any]]) -> set[str]:
    """The function names of OpenAI tool schemas (``{"type": "function", "function": ...}``)."""
    names = set()
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


class ToolCallParser:
    """Splits a streamed reply into the text to show and the tool calls it contains.

    Feed it the reply's text deltas with :meth:`feed` (returns the text safe to show now), then
    call :meth:`finish` once at the end (returns the rest of the text and the calls).

    Parameters
    ----------
    names
        The tools the request offered: a bare JSON reply is a call only when it names one of
        them (``None``: any name). Calls in ``<tool_call>`` / ``[TOOL_CALLS]`` blocks may name
        any tool; the tool loop rejects unknown ones.
    new_id
        Makes the id of the n-th call (from 0) of this reply; default ``call_<random>_<n>``.
    """

    def __init__(
        self, names: Iterable[str] | None = None, new_id: Callable[[int], str] | None = None
    ) -> None:
        self.names = set(names) if names is not None else None
        prefix = f"call_{secrets.token_hex(4)}_"
        self._new_id = new_id or (lambda n: f"{prefix}{n}")
        self._count = itertools.count()
        self.calls: list[ToolCall] = []
        self._pending = ""
        self._mode = "start"  # start | text | block | rest | bare
        self._finished = False

    def feed(self, text: str) -> str:
        """Add a text delta; returns the text that is safe to show (maybe empty)."""
        if self._finished:
            raise RuntimeError("the parser has finished")
        self._pending += text
        out: list[str] = []
        while True:
            before = (self._mode, len(self._pending))
            out.append(_STEPS[self._mode](self))
            if (self._mode, len(self._pending)) == before:
                return "".join(out)

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The end of the reply: the text still held back that is not a call, and all calls."""
        if self._finished:
            raise RuntimeError("the parser has finished")
        self._finished = True
        pending, self._pending = self._pending, ""
        mode = self._mode
        if mode == "block":
            text = self._block(pending, closed=False)
        elif mode == "rest":
            text = self._rest(pending)
        elif mode == "bare":
            text = self._bare(pending)
        else:
            text = pending
        return text, list(self.calls)

    # The states: each takes what it can from the pending text and returns the text to show.

    def _start(self) -> str:
        """The reply's leading whitespace is held until it is known whether it is bare JSON."""
        stripped = self._pending.lstrip()
        if not stripped:
            return ""
        if stripped[0] in "{[" and _may_be_bare_call(stripped) is not False:
            self._mode = "bare"
            return ""
        self._mode = "text"
        return ""

    def _text(self) -> str:
        found = [(i, m) for m in _MARKERS if (i := self._pending.find(m)) >= 0]
        if found:
            at, marker = min(found)
            out = self._pending[:at]
            self._pending = self._pending[at + len(marker) :]
            self._mode = {HERMES_OPEN: "block", MISTRAL: "rest", PYTHON_TAG: "bare"}[marker]
            return out
        keep = _held_length(self._pending, _MARKERS)
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(out) :]
        return out

    def _block_step(self) -> str:
        at = self._pending.find(HERMES_CLOSE)
        if at < 0:
            return ""
        inner = self._pending[:at]
        self._pending = self._pending[at + len(HERMES_CLOSE) :]
        self._mode = "text"
        return self._block(inner, closed=True)

    def _bare_step(self) -> str:
        if _may_be_bare_call(self._pending) is False:
            self._mode = "text"
        return ""

    def _hold(self) -> str:
        return ""

    # Turning finished pieces into calls (or text).

    def _add(self, calls: list[dict[str, Any]]) -> None:
        for call in calls:
            self.calls.append(ToolCall(self._new_id(next(self._count)), call["name"], call["args"]))

    def _block(self, inner: str, *, closed: bool) -> str:
        calls = _calls_in(inner)
        if calls is None:
            calls = _malformed_call(inner)
        if calls is None:
            _log.info("a <tool_call> block without a tool name, shown as text: %r", inner[:200])
            return HERMES_OPEN + inner + (HERMES_CLOSE if closed else "")
        self._add(calls)
        return ""

    def _rest(self, rest: str) -> str:
        calls = _calls_in(rest)
        if calls is None:
            calls = _malformed_call(rest)
        if calls is None:
            return MISTRAL + rest
        self._add(calls)
        return ""

    def _bare(self, text: str) -> str:
        calls = _calls_in(text)
        if calls and (self.names is None or all(c["name"] in self.names for c in calls)):
            self._add(calls)
            return ""
        return text


_STEPS: dict[str, Callable[[ToolCallParser], str]] = {
    "start": ToolCallParser._start,
    "text": ToolCallParser._text,
    "block": ToolCallParser._block_step,
    "rest": ToolCallParser._hold,
    "bare": ToolCallParser._bare_step,
}


def parse_tool_calls(
    text: str, names: Iterable[str] | None = None, new_id: Callable[[int], str] | None = None
) -> tuple[str, list[ToolCall]]:
    """A whole reply's text without its tool calls, and the calls (see :class:`ToolCallParser`)."""
    parser = ToolCallParser(names, new_id)
    shown = parser.feed(text)
    rest, calls = parser.finish()
    return shown + rest, calls


def _held_length(text: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that starts some marker."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:n]):
                best = n
                break
    return best


def _may_be_bare_call(text: str) -> bool | None:
    """Whether ``text`` may start a bare JSON call ``[{"`` / ``{"``: ``None`` if undecided."""
    s = text.lstrip()
    for expected in ("[{", "{"):
        if expected == "[{" and not s.startswith("["):
            continue
        for char in expected:
            if not s:
                return None
            if s[0] != char:
                return False
            s = s[1:].lstrip()
        if not s:
            return None
        return s[0] == '"'
    return False


def _calls_in(text: str) -> list[dict[str, Any]] | None:
    """The calls in a JSON object or list of them, or ``None`` if it is not that."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = [_call(item) for item in items]
    if not items or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def _call(item: object) -> dict[str, Any] | None:
    """``{"name", "arguments" | "parameters"}`` as ``{"name", "args": JSON text}``, or None."""
    if isinstance(item, dict) and isinstance(item.get("function"), dict):  # OpenAI nesting
        return _call(item["function"])
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return None
    args = item.get("arguments", item.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as JSON text
        try:
            args = json.loads(args)
        except ValueError:
            return {"name": item["name"], "args": args}
    return {"name": item["name"], "args": json.dumps(args, ensure_ascii=False)}


def _malformed_call(text: str) -> list[dict[str, Any]] | None:
    """A call with the raw text as its arguments, if the broken JSON names a tool."""
    match = _NAME.search(text)
    if match is None:
        return None
    _log.info("malformed tool call to %r: %r", match.group(1), text[:200])
    return [{"name": match.group(1), "args": text.strip()}]


FALLBACK_PROMPT = (
    "You can call these tools (JSON schemas):\n<tools>\n{tools}\n</tools>\n"
    "To call a tool, answer with only this, one line per call:\n"
    '<tool_call>{{"name": "TOOL_NAME", "arguments": {{...}}}}</tool_call>\n'
    "Results come back in <tool_response> tags. Otherwise answer normally."
)


def fallback_messages(
    messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Messages for a chat template that does not render tools: the tools and the call format
    are described in the system message, earlier calls become ``<tool_call>`` text in their
    assistant message, and tool results ``<tool_response>`` text in a user message (several
    results in a row share one), which every template can show.

    ``messages`` are prepared ones (:func:`genbot.models.base.prepare_messages`).
    """
    listing = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    intro = FALLBACK_PROMPT.format(tools=listing)
    out: list[dict[str, Any]] = []
    if tools:
        if messages and messages[0]["role"] == "system":
            out.append({"role": "system", "content": f"{messages[0]['content']}\n\n{intro}"})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": intro})
    for message in messages:
        converted = _fallback_message(message, out)
        if converted:
            out.append(converted)
    return [{k: v for k, v in m.items() if k != "_tool"} for m in out]


def _fallback_message(message: ChatMessage, out: list[dict[str, Any]]) -> dict[str, Any]:
    """One message in the fallback form; a tool result may join the user message before it
    (then an empty dict is returned)."""
    role, content = message["role"], message["content"]
    if role == "tool":
        text = f"<tool_response>\n{content}\n</tool_response>"
        last = out[-1] if out else None
        if last and last.get("role") == "user" and last.get("_tool"):
            last["content"] += "\n" + text
            return {}
        return {"role": "user", "content": text, "_tool": True}
    calls = message.get("tool_calls") or []
    lines = [
        HERMES_OPEN
        + json.dumps({"name": c["name"], "arguments": _as_json(c["arguments"])}, ensure_ascii=False)
        + HERMES_CLOSE
        for c in calls
    ]
    return {"role": role, "content": "\n".join(filter(None, [content, *lines]))}


def _as_json(arguments: str) -> Any:
    """Arguments JSON text as a value (the raw text if it is not JSON)."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def openai_messages(
    messages: Sequence[ChatMessage], *, object_arguments: bool = False
) -> list[dict[str, Any]]:
    """Prepared messages in the OpenAI form that chat templates with tools expect: an assistant
    message's calls as ``tool_calls: [{"id", "type": "function", "function": {"name",
    "arguments"}}]`` and a tool message with its ``tool_call_id``.

    Parameters
    ----------
    messages
        Prepared messages (:func:`genbot.models.base.prepare_messages`).
    object_arguments
        Give the arguments as a JSON value rather than JSON text: Hugging Face chat templates
        (e.g. Qwen's ``arguments | tojson``) expect that; llama.cpp's server wants the text.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        converted: dict[str, Any] = {"role": message["role"], "content": message["content"]}
        if message.get("tool_calls"):
            converted["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {
                        "name": c["name"],
                        "arguments": _as_json(c["arguments"])
                        if object_arguments
                        else c["arguments"],
                    },
                }
                for c in message.get("tool_calls", [])
            ]
        if "tool_call_id" in message:
            converted["tool_call_id"] = message["tool_call_id"]
        out.append(converted)
    return out
