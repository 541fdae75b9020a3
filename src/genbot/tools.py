"""Tools the model may call: :class:`Tool`, the one shape every source of tools produces
(Python functions, MCP servers), :func:`tool` (a Python function becomes a tool, its JSON
schema made from its type hints and docstring), :class:`Toolbox` (the tools of a bot, and which
of them a chat may use), and :func:`run_call` (one call checked, run and bounded, whatever it
does: an outcome, never an exception).

The tool loop that uses them is :mod:`genbot.toolloop`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import enum
import functools
import inspect
import json
import logging
import re
import types
import typing
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, Union, overload

import jsonschema

from genbot.models.base import ToolCall

__all__ = [
    "ALL_TOOLS",
    "NAME_PATTERN",
    "Outcome",
    "Tool",
    "ToolFailed",
    "Toolbox",
    "check_name",
    "function_schema",
    "run_call",
    "select_tools",
    "tool",
]

_log = logging.getLogger(__name__)

#: The names the OpenAI API accepts for a function.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: In the ``tools`` setting: every registered tool.
ALL_TOOLS = "*"
#: Threads that run synchronous tools, at most (a timed-out call keeps its thread until it
#: returns: Python cannot stop a thread).
SYNC_TOOL_THREADS = 8

F = TypeVar("F", bound=Callable[..., Any])


class ToolFailed(Exception):
    """A tool's ``run`` raises this when the call failed and its message says why in words
    meant for the model and the user (an MCP server that stopped, a result flagged as an
    error): the call's result is ``error: <message>``, and its status line shows the failure."""


@dataclass(frozen=True)
class Tool:
    """One tool: a name the OpenAI API accepts (letters, digits, ``_`` and ``-``, at most 64
    characters), what it does (for the model), the JSON schema of its arguments (an object),
    and ``run(arguments) -> text``, given arguments already checked against that schema.

    ``admin_only``: only a bot admin's chats may use it.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[[dict[str, Any]], Awaitable[str]]
    admin_only: bool = False

    def schema(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry for this tool (what :class:`genbot.models.ChatRequest`
        carries)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


def check_name(name: str) -> str:
    """``name`` if the OpenAI API accepts it as a function name.

    Parameters
    ----------
    name:
        The tool's name.

    Raises
    ------
    ValueError
        Not 1 to 64 letters, digits, ``_`` or ``-``.
    """
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise ValueError(
            f"tool name {name!r}: must be 1 to 64 letters, digits, '_' or '-' (the OpenAI rule)"
        )
    return name


# -- JSON schemas from type hints ------------------------------------------------------------

_SIMPLE: dict[object, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _hint_schema(hint: Any, where: str) -> dict[str, Any]:
    """The JSON schema of one type hint; TypeError naming ``where`` for one not supported."""
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_schema([member.value for member in hint], where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return _enum_schema(list(args), where)
    if origin is list or hint is list:
        if not args:
            return {"type": "array"}
        return {"type": "array", "items": _hint_schema(args[0], where)}
    if origin is Union or (hasattr(types, "UnionType") and isinstance(hint, types.UnionType)):
        return _optional_schema(args, where)
    raise TypeError(
        f"{where}: type {hint!r} is not supported for tools (use str, int, float, bool, "
        "Literal[...], an Enum, list[...] or X | None)"
    )


def _enum_schema(values: list[Any], where: str) -> dict[str, Any]:
    kinds = {type(value) for value in values}
    if not values or not kinds <= {str, int, float, bool}:
        raise TypeError(f"{where}: choices must be strings or numbers, not {values!r}")
    schema: dict[str, Any] = {"enum": values}
    if len(kinds) == 1:
        schema["type"] = _SIMPLE[kinds.pop()]
    return schema


def _optional_schema(args: tuple[Any, ...], where: str) -> dict[str, Any]:
    rest = [arg for arg in args if arg is not type(None)]
    if len(rest) != 1 or len(rest) == len(args):
        raise TypeError(f"{where}: only X | None unions are supported, not Union{list(args)}")
    inner = _hint_schema(rest[0], where)
    if isinstance(inner.get("type"), str):
        out = {**inner, "type": [inner["type"], "null"]}
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [inner, {"type": "null"}]}


def function_schema(fn: Callable[..., Any]) -> tuple[str, dict[str, Any]]:
    """The description and the JSON schema of the arguments of ``fn``, from its docstring and
    type hints: ``str``, ``int``, ``float``, ``bool``, ``Literal[...]``, an ``Enum``,
    ``list[...]`` of those and ``X | None``; a parameter with a default is not required. The
    description is the docstring's text before its sections; a parameter's description comes
    from a numpy-style ``Parameters`` section or a Google-style ``Args:`` section.

    Parameters
    ----------
    fn:
        The function (sync or async), every parameter annotated.

    Raises
    ------
    TypeError
        A parameter without a type hint, ``*args`` or ``**kwargs``, or an unsupported hint.
    """
    name = getattr(fn, "__name__", repr(fn))
    hints = typing.get_type_hints(fn)
    described, summary = parse_docstring(inspect.getdoc(fn) or "")
    properties: dict[str, Any] = {}
    required: list[str] = []
    for parameter in inspect.signature(fn).parameters.values():
        where = f"tool {name!r}, parameter {parameter.name!r}"
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"{where}: *args and **kwargs cannot be tool parameters")
        if parameter.name not in hints:
            raise TypeError(f"{where}: needs a type hint (its JSON schema is made from it)")
        schema = _hint_schema(hints[parameter.name], where)
        if parameter.name in described:
            schema["description"] = described[parameter.name]
        if parameter.default is parameter.empty:
            required.append(parameter.name)
        elif _is_json(parameter.default):
            schema["default"] = _plain(parameter.default)
        properties[parameter.name] = schema
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    parameters["additionalProperties"] = False
    return summary, parameters


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _is_json(value: Any) -> bool:
    try:
        json.dumps(_plain(value))
    except (TypeError, ValueError):
        return False
    return True


_SECTION = re.compile(
    r"(Parameters|Params|Arguments|Args|Returns?|Raises|Yields?|Examples?|"
    r"Notes?|See Also|References|Attributes|Other Parameters)\s*:?\s*$"
)
_PARAMETER_SECTIONS = {"Parameters", "Params", "Arguments", "Args"}
_ENTRY = re.compile(r"(\w+)\s*(?:\(([^)]*)\))?\s*(?::\s*(.*))?$")


def parse_docstring(doc: str) -> tuple[dict[str, str], str]:
    """The parameter descriptions of a (cleaned) docstring, and its summary: the text before
    its first section.

    Parameters
    ----------
    doc:
        The docstring, as :func:`inspect.getdoc` gives it.
    """
    lines = doc.splitlines()
    headers = [
        (i, found)
        for i, line in enumerate(lines)
        if not line.startswith((" ", "\t")) and (found := _section_at(lines, i)) is not None
    ]
    summary = "\n".join(lines[: headers[0][0]] if headers else lines).strip()
    described: dict[str, str] = {}
    for n, (i, (name, numpy)) in enumerate(headers):
        end = headers[n + 1][0] if n + 1 < len(headers) else len(lines)
        if name in _PARAMETER_SECTIONS:
            described.update(_entries(lines[i + (2 if numpy else 1) : end], numpy))
    return described, summary


def _section_at(lines: list[str], i: int) -> tuple[str, bool] | None:
    """(section name, numpy style) if a section header starts at line ``i``."""
    match = _SECTION.match(lines[i].strip())
    if match is None:
        return None
    following = lines[i + 1].strip() if i + 1 < len(lines) else ""
    if following and set(following) == {"-"}:
        return match.group(1), True
    if lines[i].rstrip().endswith(":"):
        return match.group(1), False
    return None


def _entries(lines: list[str], numpy: bool) -> dict[str, str]:
    """``name -> description`` of a parameter section's lines."""
    body = [line for line in lines if line.strip()]
    if not body:
        return {}
    indent = min(len(line) - len(line.lstrip()) for line in body)
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in body:
        depth = len(line) - len(line.lstrip())
        match = _ENTRY.match(line.strip()) if depth == indent else None
        if match is not None:
            current = out.setdefault(match.group(1), [])
            if not numpy and match.group(3):
                current.append(match.group(3).strip())
        elif current is not None:
            current.append(line.strip())
    return {name: " ".join(words) for name, words in out.items() if words}


# -- Python functions as tools ---------------------------------------------------------------

_threads: concurrent.futures.ThreadPoolExecutor | None = None


def _tool_threads() -> concurrent.futures.ThreadPoolExecutor:
    global _threads
    if _threads is None:
        _threads = concurrent.futures.ThreadPoolExecutor(
            SYNC_TOOL_THREADS, thread_name_prefix="genbot-tool"
        )
    return _threads


def _as_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    try:
        return json.dumps(_plain(result), ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(result)


def _converters(fn: Callable[..., Any]) -> dict[str, Callable[[Any], Any]]:
    """Enum parameters get their member, not its value."""
    hints = typing.get_type_hints(fn)
    out: dict[str, Callable[[Any], Any]] = {}
    for name, hint in hints.items():
        inner = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        kind = inner[0] if len(inner) == 1 else hint
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            out[name] = _to_member(kind)
    return out


def _to_member(kind: type[enum.Enum]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else kind(value)


def _runner(fn: Callable[..., Any]) -> Callable[[dict[str, Any]], Awaitable[str]]:
    convert = _converters(fn)
    asynchronous = inspect.iscoroutinefunction(fn)

    async def run(arguments: dict[str, Any]) -> str:
        kwargs = {k: convert[k](v) if k in convert else v for k, v in arguments.items()}
        if asynchronous:
            return _as_text(await fn(**kwargs))
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, **kwargs)
        return _as_text(await loop.run_in_executor(_tool_threads(), call))

    return run


@overload
def tool(
    fn: Callable[..., Any],
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    admin_only: bool = False,
) -> Tool: ...
@overload
def tool(
    *, name: str | None = None, description: str | None = None, admin_only: bool = False
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    admin_only: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a :class:`Tool` of a Python function (sync or async) with type hints and a
    docstring (see :func:`function_schema`). Use as ``@tool`` or ``@tool(name=...)``. A sync
    function runs in a thread (at most :data:`SYNC_TOOL_THREADS` at once); what it returns
    becomes text (a string as it is, anything else as JSON).

    Parameters
    ----------
    fn:
        The function.
    name:
        The tool's name (default: the function's).
    description:
        What the tool does, for the model (default: the docstring's summary).
    admin_only:
        Only a bot admin's chats may use it.

    Raises
    ------
    TypeError
        A hint that has no JSON schema (see :func:`function_schema`).
    ValueError
        A name the OpenAI API refuses.
    """

    def make(fn: Callable[..., Any]) -> Tool:
        summary, parameters = function_schema(fn)
        return Tool(
            name=check_name(name or fn.__name__),
            description=description if description is not None else summary,
            parameters=parameters,
            run=_runner(fn),
            admin_only=admin_only,
        )

    return make if fn is None else make(fn)


# -- a bot's tools ---------------------------------------------------------------------------


def select_tools(
    tools: Iterable[Tool], enabled: Collection[str], admin_names: Collection[str], admin: bool
) -> list[Tool]:
    """The tools a chat may use: those ``enabled`` names (``"*"``: all), less the admin-only
    ones (``tool.admin_only`` or named in ``admin_names``) unless the chat is an ``admin``'s.

    Parameters
    ----------
    tools:
        Every tool the bot has.
    enabled:
        The names turned on (the ``tools`` setting).
    admin_names:
        Names only admins may use (the ``admin_tools`` setting).
    admin:
        Whether the question's author is a bot admin.
    """
    every = ALL_TOOLS in enabled
    return [
        t
        for t in tools
        if (every or t.name in enabled) and (admin or not (t.admin_only or t.name in admin_names))
    ]


class _Register(Protocol):
    def __call__(self, fn: F, /) -> F: ...


class Toolbox:
    """The tools of a bot, by name. Register with :meth:`add` or the :meth:`tool` decorator.

    Parameters
    ----------
    tools:
        Tools to start with.

    Raises
    ------
    ValueError
        Two tools of one name.
    """

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, new: Tool, *, replace: bool = False) -> Tool:
        """Register ``new``; returns it.

        Parameters
        ----------
        new:
            The tool; its parameter schema is checked as a JSON schema.
        replace:
            Replace a tool of the same name instead of refusing it.

        Raises
        ------
        ValueError
            A bad name, a name already taken (without ``replace``), or a parameter schema that
            is not a JSON schema of an object.
        """
        check_name(new.name)
        if new.name in self._tools and not replace:
            raise ValueError(f"a tool named {new.name!r} is already registered")
        try:
            jsonschema.Draft202012Validator.check_schema(new.parameters)
        except jsonschema.SchemaError as error:
            raise ValueError(f"tool {new.name!r}: bad parameter schema: {error.message}") from None
        if new.parameters.get("type") != "object":
            raise ValueError(f"tool {new.name!r}: the parameter schema must be an object's")
        self._tools[new.name] = new
        return new

    @overload
    def tool(self, fn: F, /) -> F: ...
    @overload
    def tool(
        self, *, name: str | None = None, description: str | None = None, admin_only: bool = False
    ) -> _Register: ...
    def tool(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        admin_only: bool = False,
    ) -> Any:
        """Decorator: register a Python function as a tool (see :func:`tool`); the function
        is returned unchanged, so it can still be called.

        Parameters
        ----------
        fn, name, description, admin_only:
            As :func:`tool`.

        Raises
        ------
        TypeError, ValueError
            As :func:`tool` and :meth:`add`.
        """

        def register(fn: F) -> F:
            self.add(tool(fn, name=name, description=description, admin_only=admin_only))
            return fn

        return register if fn is None else register(fn)

    def remove(self, name: str) -> None:
        """Unregister the tool ``name`` (nothing when there is none).

        Parameters
        ----------
        name:
            Its name.
        """
        self._tools.pop(name, None)

    def get(self, name: str) -> Tool | None:
        """The tool named ``name``, or ``None``.

        Parameters
        ----------
        name:
            Its name.
        """
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def select(
        self, enabled: Collection[str], admin_names: Collection[str], admin: bool
    ) -> list[Tool]:
        """The tools one chat may use: :func:`select_tools` over this toolbox.

        Parameters
        ----------
        enabled, admin_names, admin:
            As :func:`select_tools`.
        """
        return select_tools(self, enabled, admin_names, admin)


# -- running one call ------------------------------------------------------------------------

#: What a call came to, the ``outcome`` label of the tool-call metric.
OUTCOMES = ("ok", "error", "timeout", "invalid", "unknown")
#: The metric label of a tool the model named but was not offered (names stay bounded).
UNKNOWN_TOOL = "(unknown)"
#: Characters of a failure reason shown in the reply.
REASON_CHARS = 160


@dataclass(frozen=True)
class Outcome:
    """What one call came to: ``kind`` (one of :data:`OUTCOMES`), the result text for the
    model (``text``, at most the output cap), and for a failure the short ``reason`` the
    reply shows."""

    call: ToolCall
    kind: str
    text: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    @property
    def label(self) -> str:
        """The tool's name for the metric: :data:`UNKNOWN_TOOL` for one not offered."""
        return UNKNOWN_TOOL if self.kind == "unknown" else self.call.name


def cap(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying so at its end."""
    if len(text) <= limit:
        return text
    note = f"… [cut: {len(text)} characters in all]"
    return text[: max(0, limit - len(note))] + note if limit > len(note) else text[:limit]


def _arguments(call: ToolCall, found: Tool) -> dict[str, Any]:
    """The call's arguments, checked against the tool's schema (ValueError saying why not)."""
    try:
        arguments = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError as error:
        raise ValueError(f"the arguments are not JSON ({error})") from None
    if not isinstance(arguments, dict):
        raise ValueError("the arguments must be a JSON object")
    validator = jsonschema.Draft202012Validator(found.parameters)
    wrong = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    if wrong is not None:
        at = "/".join(str(p) for p in wrong.absolute_path)
        raise ValueError(f"{at + ': ' if at else ''}{wrong.message}")
    return arguments


async def run_call(
    call: ToolCall, tools: Mapping[str, Tool], timeout: float, output_chars: int
) -> Outcome:
    """Run one call: look its tool up among ``tools`` (those offered), check its arguments
    against the tool's schema, run it for at most ``timeout`` seconds, and cap its text at
    ``output_chars``. Never raises (but for cancellation): a failure is an :class:`Outcome`
    whose text tells the model what went wrong.

    Parameters
    ----------
    call:
        The model's call.
    tools:
        The tools offered to this chat, by name.
    timeout:
        Seconds the tool may run.
    output_chars:
        The most characters of its result the model gets.
    """
    found = tools.get(call.name)
    if found is None:
        offered = ", ".join(sorted(tools)) or "none"
        reason = f"no tool named {call.name!r} (offered: {offered})"
        return Outcome(call, "unknown", cap(f"error: {reason}", output_chars), reason)
    try:
        arguments = _arguments(call, found)
    except ValueError as error:
        reason = f"invalid arguments: {error}"
        return Outcome(call, "invalid", cap(f"error: {reason}", output_chars), reason)
    try:
        result: object = await asyncio.wait_for(found.run(arguments), timeout)
    except asyncio.TimeoutError:
        reason = f"timed out after {timeout:g} s"
        return Outcome(call, "timeout", cap(f"error: the tool {reason}", output_chars), reason)
    except ToolFailed as error:
        reason = str(error) or "failed"
        return Outcome(call, "error", cap(f"error: {reason}", output_chars), reason)
    except Exception as error:
        _log.info("tool %r failed: %r", call.name, error, exc_info=error)
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        return Outcome(call, "error", cap(f"error: {reason}", output_chars), reason)
    return Outcome(call, "ok", cap(_as_text(result), output_chars))
